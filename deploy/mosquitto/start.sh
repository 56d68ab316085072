#!/bin/sh
# Starts Mosquitto with dynamic security. On the first start (no security file yet) it creates
# the file with the service account `ota-service` as the dynamic-security admin, its password
# from MQTT_SERVICE_PASSWORD, and lets that account publish commands to devices
# (`{device_id}/control/{command}`); subscribing to results and $CONTROL come with the admin
# role. The file's path is read from the config, so the same script serves any layout.
set -eu

conf=${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}
dynsec_file=$(sed -n 's/^plugin_opt_config_file[[:space:]]*//p' "$conf")

if [ ! -s "$dynsec_file" ]; then
    : "${MQTT_SERVICE_PASSWORD:?set MQTT_SERVICE_PASSWORD to the ota-service account password}"
    fresh="$dynsec_file.new"
    rm -f "$fresh" "$fresh.granted"  # left by a start that died half-way
    mosquitto_ctrl dynsec init "$fresh" ota-service "$MQTT_SERVICE_PASSWORD" >/dev/null
    # Granted in the file, before the broker reads it: through a running broker, changing the
    # roles of the connected admin makes Mosquitto drop it, and mosquitto_ctrl waits 10 s.
    # A fresh file has one role (admin), so one "acls" list.
    sed 's/"acls":[[:space:]]*\[{/"acls": [{"acltype": "publishClientSend", "topic": "+\/control\/+", "allow": true}, {/' \
        "$fresh" >"$fresh.granted"
    if ! grep -q '"+/control/+"' "$fresh.granted"; then
        echo "start.sh: could not grant ota-service the right to publish commands in $fresh" >&2
        exit 1
    fi
    mv "$fresh.granted" "$dynsec_file"
    rm -f "$fresh"
    chown mosquitto:mosquitto "$dynsec_file" 2>/dev/null || true
    echo "start.sh: created $dynsec_file with the ota-service account"
fi

exec mosquitto -c "$conf"
