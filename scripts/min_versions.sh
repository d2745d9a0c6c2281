#!/usr/bin/env bash
# Minimum versions: the declared floors (pyproject.toml) of the libraries whose private or recent APIs the
# harness uses (open_clip_torch, timm, ray[tune,train]) are installed into a throwaway venv layered over the current
# environment (its packages stay visible behind the floors; torch and the rest are as installed), then the
# tests that exercise those APIs run there. Needs the project installed in the active environment (as .ci/run
# does).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
mapfile -t floors < <(python - <<'EOF'
import tomllib

from packaging.requirements import Requirement

with open("pyproject.toml", "rb") as file:
    dependencies = [Requirement(text) for text in tomllib.load(file)["project"]["dependencies"]]
for requirement in dependencies:
    if requirement.name in ("open_clip_torch", "timm", "ray"):
        (floor,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        print(f"{requirement.name}{extras}=={floor}")
EOF
)
if [ "${#floors[@]}" != 3 ]; then
    echo "min_versions: expected floors of open_clip_torch, timm and ray in pyproject.toml, got: ${floors[*]}" >&2
    exit 1
fi
layer=$(mktemp -d)
trap 'rm -rf "$layer"' EXIT
python -m venv --without-pip "$layer"
base=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
layered=$("$layer/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# an `import` line of a .pth file runs at start-up: the current environment, its own .pth files included
echo "import site; site.addsitedir('$base')" > "$layered/base_environment.pth"
echo "floors: ${floors[*]}"
# pip resolves the floors' own requirements against the layered environment and installs only what differs
python -m pip --python "$layer/bin/python" install -q --disable-pip-version-check "${floors[@]}"
"$layer/bin/python" - <<'EOF'
import importlib.metadata as metadata

import open_clip
import ray
import timm

print("got:", ", ".join(f"{name} {metadata.version(name)} ({module.__file__.rsplit('/site-packages/')[0]})"
                        for name, module in (("open_clip_torch", open_clip), ("timm", timm), ("ray", ray))))
EOF
"$layer/bin/python" -m pytest -q -p no:cacheprovider tests/test_backbones.py \
    tests/test_baselines.py::test_zero_shot_is_argmax_of_image_text_similarity \
    tests/test_baselines.py::test_clip_probe_head_starts_from_text_embeddings \
    tests/test_baselines.py::test_text_towers_with_hub_tokenizers_are_refused_offline \
    tests/test_sweep.py::test_ray_internals_are_used_only_on_checked_ray_versions \
    tests/test_sweep.py::test_ray_sweep_with_optuna_and_asha_records_four_trials \
    tests/test_sweep.py::test_interrupted_ray_sweep_resumes_without_duplicates \
    tests/test_sweep.py::test_a_sweep_of_data_parallel_trials_runs_each_as_a_two_process_job_under_asha
echo "minimum versions checked in $((SECONDS - started)) s"
