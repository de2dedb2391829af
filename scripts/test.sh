#!/usr/bin/env bash
# The test command of the README and of CI: install with the dev tools, lint, run the tests.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev || exit 1
# The report test renders the page in a real browser: Debian's chromium, installed when missing.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium for the report test"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "could not install chromium: the report's browser test will be skipped"
fi
# The example-by-example agreement test with lm-evaluation-harness (tests/test_eval_lmeval.py) needs lm-eval
# in its own virtualenv (~4 min to install once; GLASSLM_SKIP_LMEVAL=1 skips it, and so does a failed install).
if [ "${GLASSLM_SKIP_LMEVAL:-0}" != 1 ]; then
  bash benchmarks/setup_lmeval.sh || echo "could not install lm-eval: the agreement test will be skipped"
fi
.venv/bin/ruff check src tests benchmarks || exit 1
.venv/bin/ruff format --check src tests benchmarks scripts || exit 1
.venv/bin/mypy || exit 1
.venv/bin/python -m pytest -q "$@"
rc=$?
# pytest exits 5 when it collected no tests: that is not a failure of the code under test.
if [ $rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi
exit $rc
