# Source on the lent accelerator (docs/contributing.md): installs the wheels carried in .whl/
# and makes this checkout importable as `framestream` without an install (the image has no
# registry to resolve our dependencies from, and its torch must stay).
#
#   run(command=". evals/devtools/device_env.sh && python3 -m pytest -m gpu ...", carry=[".whl"])
# one wheel at a time: a compiled wheel built for another Python (the image moved from 3.11 to
# 3.12 on 2026-12-07) is skipped with pip's reason, not allowed to stop the pure-Python ones
for wheel in .whl/*.whl; do
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$wheel" || echo "device_env: skipped $wheel"
done
mkdir -p /tmp/ns/framestream /tmp/ns/framestream-0.dist-info
for folder in stream models kernels clients cli evals; do
    ln -sfn "$PWD/$folder" "/tmp/ns/framestream/$folder"
done
# stream/version.py reads the distribution's version
printf 'Metadata-Version: 2.1\nName: framestream\nVersion: %s\n' \
    "$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)" > /tmp/ns/framestream-0.dist-info/METADATA
export PYTHONPATH=/tmp/site:/tmp/ns PYTHONUNBUFFERED=1
