#!/bin/sh
# Gives one device its broker account: user name = device id, password = device token, the
# login tied to client id = device id, and a role of its own that may receive its commands,
# publish their results, and publish and read its data topic (the device id).
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

# mosquitto_ctrl exits 0 even when the plugin refuses a command: read what it says.
ctrl() {
    out=$(mosquitto_ctrl -h "${MQTT_HOST:-localhost}" -p "${MQTT_PORT:-1883}" \
        -u ota-service -P "$MQTT_SERVICE_PASSWORD" dynsec "$@" 2>&1) || {
        echo "$out" >&2
        exit 1
    }
    case $out in
        *"already exists"*) ;; # a second run, or the service made it first: nothing to change
        *[Ee]rror*)
            echo "mosquitto_ctrl dynsec $1: $out" >&2
            exit 1
            ;;
    esac
}

# The role name the service uses when it keeps the broker in step (OTA_MQTT_PROVISION=dynsec).
role="ota-device-$device"
ctrl createClient "$device" -p "$token"
case $out in
    *"already exists"*) ctrl setClientPassword "$device" "$token" ;; # the token given wins
esac
ctrl createRole "$role"
ctrl addRoleACL "$role" subscribePattern "$device/control/#" allow
ctrl addRoleACL "$role" publishClientReceive "$device/control/#" allow
ctrl addRoleACL "$role" publishClientSend "$device/control/+/result" allow
ctrl addRoleACL "$role" subscribePattern "$device" allow
ctrl addRoleACL "$role" publishClientReceive "$device" allow
ctrl addRoleACL "$role" publishClientSend "$device" allow
# Refused under any other client id: no device takes over another's session or the engine's.
ctrl setClientId "$device" "$device"
ctrl getClient "$device"
case $out in
    *"$role "*) ;; # has it already (adding it twice is an "Internal error")
    *) ctrl addClientRole "$device" "$role" ;;
esac
echo "device $device may now connect"
