#!/usr/bin/env bash
# Installs the kit's wheels for the modules this python lacks (skorch, tabulate, simplejpeg, imagecodecs)
# into a target folder, offline, then prints the PYTHONPATH to use (repo root first, then that folder).
# Usage (repo root):  bash benchmarks/gpu_kit/install.sh .gpu_kit/wheels [TARGET=/tmp/skdfl-kit]
#                     export PYTHONPATH=$PWD:/tmp/skdfl-kit
# Falls back to unzipping the wheels when python3 has no pip. KIT_FORCE=1 installs every wheel, KIT_NO_PIP=1
# forces the unzip path, KIT_PIP_ARGS adds pip options (the last three: local testing only).
set -euo pipefail
wheel_dir=$(cd "${1:?usage: install.sh WHEEL_DIR [TARGET]}" && pwd)
site=${2:-/tmp/skdfl-kit}
repo=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-python3}
wheels=()
for mod in skorch tabulate simplejpeg imagecodecs; do
  if [[ -z "${KIT_FORCE:-}" ]] && "$py" -c "import $mod" 2>/dev/null; then
    echo "kit: $mod already importable: $("$py" -c "import $mod; print(getattr($mod, '__version__', '?'))")"
  else
    wheels+=("$wheel_dir"/$mod-*.whl)
  fi
done
mkdir -p "$site"
if ((${#wheels[@]})) && [[ -z "${KIT_NO_PIP:-}" ]] && "$py" -m pip --version >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    ${KIT_PIP_ARGS:-} "${wheels[@]}"
  printf 'kit: installed %s\n' "${wheels[@]##*/}"
elif ((${#wheels[@]})); then  # no pip: a wheel is a zip of site-packages content (none of these has .data/)
  "$py" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$site" "${wheels[@]}"
  printf 'kit: unzipped %s\n' "${wheels[@]##*/}"
fi
echo "export PYTHONPATH=$repo:$site"
