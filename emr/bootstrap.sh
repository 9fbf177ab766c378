#!/usr/bin/env bash
# EMR bootstrap action: runs on every node before Spark starts.
#
#   bootstrap.sh s3://bucket/work/code/wheelhouse/ [/usr/bin/python3.11]
#
# Cluster nodes have no internet, so every Python dependency comes from a
# wheelhouse in S3 (built by `make wheelhouse`). pydicom 3 needs Python >= 3.10
# and EMR 7 (Amazon Linux 2023) ships 3.9, so python3.11 is installed from the
# Amazon Linux repository, which is reachable inside AWS. The cluster request
# makes that interpreter PYSPARK_PYTHON (spark-env); this script also exports
# it for interactive shells on the node.
set -euo pipefail

WHEELHOUSE="${1:?usage: bootstrap.sh s3://bucket/prefix/wheelhouse/ [python]}"
PYTHON="${2:-/usr/bin/python3.11}"
PACKAGE="${BOOTSTRAP_PACKAGE:-dicom-reassembly}"
IMPORTS="${BOOTSTRAP_IMPORTS:-dicom_reassembly pydicom numpy pyarrow boto3 openjpeg}"
PROFILE="${BOOTSTRAP_PROFILE:-/etc/profile.d/pyspark-python.sh}"
LOCAL="$(mktemp -d /tmp/wheelhouse.XXXXXX)"
trap 'rm -rf "$LOCAL"' EXIT

log() { echo "bootstrap: $*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    name="$(basename "$PYTHON")"
    log "installing $name"
    if command -v dnf >/dev/null 2>&1; then
        sudo dnf install -y "$name" "$name-pip"
    else
        log "$PYTHON not found and no dnf to install it (EMR 7.x / Amazon Linux 2023 needed)"
        exit 1
    fi
fi

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    log "$PYTHON is $("$PYTHON" -V 2>&1); pydicom 3 needs Python >= 3.10"
    exit 1
fi

log "copying wheels from $WHEELHOUSE"
aws s3 cp --recursive --only-show-errors "$WHEELHOUSE" "$LOCAL"

# Older pips reject --break-system-packages; the environment variable is ignored by them.
log "installing $PACKAGE with $("$PYTHON" -V 2>&1)"
sudo env PIP_BREAK_SYSTEM_PACKAGES=1 ${PIP_TARGET:+PIP_TARGET="$PIP_TARGET"} \
    "$PYTHON" -m pip install --no-index --find-links "$LOCAL" --no-cache-dir --quiet "$PACKAGE"

for module in $IMPORTS; do
    "$PYTHON" -c "import $module" || { log "cannot import $module after install"; exit 1; }
done

echo "export PYSPARK_PYTHON=$PYTHON" | sudo tee "$PROFILE" >/dev/null
log "done: $PACKAGE installed for $PYTHON"
