#!/usr/bin/env bash
# The package as a user installs it: build the sdist and the wheel (the wheel from the sdist), look
# at what the wheel holds, install it into a fresh virtual environment without extras and use the
# library from outside the source tree, check that the command asks for the lab extra in one line,
# then install the wheel with [lab] and run a packaged experiment by name.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python -m pip install --quiet build
python -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/*.whl)
SDIST=$(ls "$WORK"/dist/*.tar.gz)
echo "built $(basename "$SDIST") ($(du -k "$SDIST" | cut -f1) KiB), $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"

# The wheel holds the library, py.typed, the lab with its configs and results, and nothing else.
python - "$WHEEL" <<'EOF'
import sys, zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
files = [n for n in names if ".dist-info/" not in n]
print(f"wheel: {len(files)} files, {sum(n.endswith('.py') for n in files)} modules")
for needed in [
    "optim_chain/py.typed",
    "optim_chain/__init__.py",
    "optim_chain/lab/cli.py",
    "optim_chain/lab/configs/digits_compare.yaml",
    "optim_chain/lab/configs/mnist1d_compare.yaml",
    "optim_chain/lab/configs/presets/adamw.yaml",
    "optim_chain/lab/results/mnist1d_map.json",
]:
    assert needed in names, f"the wheel lacks {needed}"
strays = [n for n in files if not n.startswith("optim_chain/")]
assert not strays, f"the wheel holds files outside the package: {strays}"
EOF

python -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "$WHEEL"
cd "$WORK"  # from here on, nothing of the source tree is on the path
no_torch() {
    "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
        || { echo "$1 installed torch"; exit 1; }
}
no_torch "the wheel without extras"

"$PY" - "$WORK" <<'EOF'
import sys

import jax
import jax.numpy as jnp
import optax

import optim_chain as oc

assert oc.__file__.startswith(sys.argv[1]), f"optim_chain imported from {oc.__file__}"
params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
opt = oc.adamw(1e-2, weight_decay=0.1)
grads = jax.tree.map(jnp.ones_like, params)
updates, state = opt.update(grads, opt.init(params), params)
new = optax.apply_updates(params, updates)
# Adam's first step moves each weight by the learning rate; decay takes lr * 0.1 * w more
assert jnp.allclose(new["w"], 1 - 1e-2 - 1e-2 * 0.1 * 1, atol=1e-6), new["w"]
print(f"optim_chain {oc.__version__}: one adamw step without extras")
EOF

# pyright reads the installed wheel's annotations (py.typed) the way a user's checker does
if command -v pyright >/dev/null; then
    printf '%s\n' "import optim_chain as oc" "opt: oc.Transform = oc.adamw(1e-3, weight_decay=0.1)" \
        "name: str = opt.name" >"$WORK/uses_types.py"
    (cd "$WORK" && pyright --pythonpath "$PY" uses_types.py >"$WORK/pyright.log") \
        || { cat "$WORK/pyright.log"; exit 1; }
    echo "pyright: the installed wheel's public names are typed"
fi

status=0
"$WORK/venv/bin/optim-chain" --help >"$WORK/help.out" 2>&1 || status=$?
[ "$status" -ne 0 ] || { echo "optim-chain --help without the lab extra should fail"; exit 1; }
[ "$(wc -l <"$WORK/help.out")" -eq 1 ] || { echo "expected one line:"; cat "$WORK/help.out"; exit 1; }
grep -qF 'pip install "optim_chain[lab]"' "$WORK/help.out" || { cat "$WORK/help.out"; exit 1; }
echo "without the lab extra: $(cat "$WORK/help.out")"

"$PY" -m pip install --quiet "$WHEEL[lab]"
no_torch "the lab extra"
"$WORK/venv/bin/optim-chain" --help >/dev/null
"$WORK/venv/bin/optim-chain" compare --config configs/digits_compare.yaml --out "$WORK/runs" --no-progress
ls "$WORK"/runs/digits_compare/ >/dev/null
echo "wheel check passed (source tree $ROOT untouched)"
