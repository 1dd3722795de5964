#!/usr/bin/env bash
# Fetch the wheels gpu/check.sh installs on the GPU machine (Python 3.12, x86-64, no
# internet there) into .whl/ (git-ignored; carried to the machine with the run's `carry`),
# and check that they fit what a run carries (64 MiB with the working tree).
# Usage: gpu/wheels.sh        (needs PyPI; about 56 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64; do
    platforms+=(--platform "$tag")
done
grep -v '^#' gpu/wheels.txt | grep . | while read -r requirement; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .whl "$requirement"
done
wheels=$(du -sb .whl | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "wheels $((wheels >> 20)) MiB + working tree $((tree >> 20)) MiB of the 64 MiB a run carries"
((wheels + tree < 64 << 20)) || { echo "too large to carry"; exit 1; }
