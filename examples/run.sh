#!/usr/bin/env bash
# Install reconciler into .venv and run the bundled example, offline:
# mirror examples/upstream (a small signed archive shipped in the repo), snapshot it,
# publish two signed APT trees, verify them, and print the apt sources lines.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

if [ ! -x .venv/bin/reconciler ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e .
fi
for tool in gpg gpgv; do
  command -v "$tool" >/dev/null || { echo "please install $tool (apt-get install gpg gpgv)"; exit 1; }
done

# The default root, ./.reconciler: the README's commands, run from this directory, see it.
export RECONCILER_ROOT="${RECONCILER_ROOT:-$top/.reconciler}"
.venv/bin/reconciler validate -f examples/repos
.venv/bin/reconciler plan -f examples/repos
.venv/bin/reconciler apply -f examples/repos
.venv/bin/reconciler verify
.venv/bin/reconciler list publishes

echo
echo "Use the published trees with apt (sources.list lines):"
for prefix in example hello; do
  echo "deb [signed-by=$top/examples/keys/signing.pub.gpg] file:$RECONCILER_ROOT/public/$prefix stable main"
done
