#!/usr/bin/env bash
# Install lensprobe with every extra and the test tools into the current Python, at the versions
# of requirements/lock.txt (refresh the lock: see its first lines), so that a fresh machine and an
# old one get the same packages.
#
# torch first: a torch >= 2.4 that is already there is kept (e.g. your CUDA build); otherwise the
# CPU build pinned in requirements/torch.txt is installed. (A bare `torch>=2.4` would pull the
# newest release with several GB of CUDA wheels.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
if ! "$PY" -c 'import sys, torch; v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 4))' 2>/dev/null; then
  "${PIP[@]}" -r requirements/torch.txt
fi
# Everything else at the locked versions; the torch line is left out so the torch chosen above stays.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
grep -v -E '^torch==' requirements/lock.txt > "$constraints"
"${PIP[@]}" -c "$constraints" -e ".[all,dev]"
# The report's browser test renders it in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || echo "setup: could not install chromium; the browser test will fail until it is installed" >&2
fi
"$PY" - <<'PY'
import importlib.metadata as md
names = ("torch", "transformers", "transformer-lens", "nnsight", "datasets")
print("setup: " + ", ".join(f"{n} {md.version(n)}" for n in names))
PY
