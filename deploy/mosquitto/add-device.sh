#!/bin/sh
# Gives one device its broker account: user name = device id, password = device token, and a
# role of its own that may receive its commands and publish their results.
#   MQTT_SERVICE_PASSWORD=… deploy/mosquitto/add-device.sh DEVICE_ID DEVICE_TOKEN
# MQTT_HOST (default localhost) and MQTT_PORT (default 1883) say where the broker is.
# Until the service keeps the broker in step itself (OTA_MQTT_PROVISION=dynsec), run this for
# every device you create.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 DEVICE_ID DEVICE_TOKEN" >&2
    exit 2
fi
device=$1
token=$2
: "${MQTT_SERVICE_PASSWORD:?set MQTT_SERVICE_PASSWORD to the ota-service account password}"

ctrl() {
    mosquitto_ctrl -h "${MQTT_HOST:-localhost}" -p "${MQTT_PORT:-1883}" \
        -u ota-service -P "$MQTT_SERVICE_PASSWORD" dynsec "$@" >/dev/null
}

role="device-$device"
ctrl createClient "$device" -p "$token"
ctrl createRole "$role"
ctrl addRoleACL "$role" subscribePattern "$device/control/#" allow
ctrl addRoleACL "$role" publishClientReceive "$device/control/#" allow
ctrl addRoleACL "$role" publishClientSend "$device/control/+/result" allow
ctrl addClientRole "$device" "$role"
echo "device $device may now connect"
