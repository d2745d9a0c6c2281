#!/usr/bin/env bash
# The built wheel, installed as a user would (not editable) in a throwaway venv outside the checkout: its
# contents and build log, `bench list protocols` and `bench benchmark embedded`. To keep CI short the venv reuses
# the dependencies already installed for the running python (a .pth naming its site-packages folders; their own
# .pth files, such as an editable install's, are not run) and installs the wheel alone with --no-deps.
# Usage: scripts/wheel_check.sh [PYTHON]  (default: python, the CI venv's)
set -euo pipefail
checkout="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m pip wheel -v --no-deps -w "$work/dist" "$checkout" >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
wheel="$(ls "$work"/dist/lt_bench-*.whl)"
if grep -E "would be ignored|[A-Za-z]Warning:" "$work/build.log"; then  # setuptools' warnings
    echo "wheel_check: the build log above has warnings"; exit 1
fi
"$python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
wanted = ["bench/protocols/embedded.toml", "bench/protocols/cifar10_lt_cpu.toml",
          "bench/pretrained/vit_micro_fmnist.safetensors", "bench/pretrained/vit_micro_fmnist.json",
          "bench/open_clip_configs/clip_micro.json", "bench/methods/lpt.py", "bench/datasets/digits.py"]
missing = [n for n in wanted if n not in names]
licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
if missing or not licence:
    sys.exit(f"wheel_check: the wheel lacks {missing or 'its LICENSE'}")
print(f"wheel_check: {sys.argv[1].rsplit('/', 1)[1]} holds {len(names)} files, protocols and licence included")
PY

"$python" -m venv --without-pip "$work/venv"
"$python" -c "import sys; print('\n'.join(p for p in sys.path if p.endswith('site-packages')))" \
    >"$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/ci_deps.pth"
"$python" -m pip --python "$work/venv/bin/python" install -q --no-deps "$wheel"

cd "$work"  # outside the checkout: nothing can be imported from it
installed="$("$work/venv/bin/python" -c "import bench; print(bench.__file__)")"
echo "wheel_check: bench is imported from $installed"
case "$installed" in "$work/venv/"*) ;; *) echo "wheel_check: not the installed wheel"; exit 1;; esac
"$work/venv/bin/bench" list protocols | tee "$work/protocols.txt"
for name in embedded cifar10_lt_cpu places_lt_lpt; do
    grep -q "$name" "$work/protocols.txt" || { echo "wheel_check: protocol $name not listed"; exit 1; }
done
"$work/venv/bin/bench" benchmark embedded --out "$work/results" --format md
test -s "$work/results/reports/embedded/leaderboard.md"
echo "wheel_check: the installed wheel lists the protocols and runs bench benchmark embedded"
