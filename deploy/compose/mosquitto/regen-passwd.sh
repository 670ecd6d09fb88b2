#!/bin/sh
# Regenerates the TEST password files: each user's password is "<user>-test".
# For production, run mosquitto_passwd with real secrets and keep the files out of git.
set -eu
cd "$(dirname "$0")"
rm -f plant.passwd provincial.passwd
touch plant.passwd provincial.passwd
for u in alsentry operator console; do mosquitto_passwd -b plant.passwd "$u" "$u-test"; done
for u in plant-qingzhen console; do mosquitto_passwd -b provincial.passwd "$u" "$u-test"; done
chmod 0644 plant.passwd provincial.passwd
