#!/bin/bash
# Runs the README's Quickstart block as it is written, line by line, after its first line
# (`bash e2e/demo.sh`, which must have just run): every line must succeed, the chat completion must
# answer with a choice, and the line the README says the API server refuses must be refused with
# its CEL message. Its last line takes the cluster down. CI runs it right after the demo.
set -uo pipefail
cd "$(dirname "$0")/.."
# The block's lines, with backslash continuations joined.
mapfile -t lines < <(awk '/^## Quickstart/ {q = 1} q && /^```sh/ {b = 1; next} b && /^```/ {exit}
  b {if (sub(/\\$/, "")) {acc = acc $0; next} print acc $0; acc = ""}' README.md)
[ ${#lines[@]} -ge 5 ] || { echo "quickstart: no Quickstart block found in README.md" >&2; exit 1; }
[ "${lines[0]}" = "bash e2e/demo.sh" ] || { echo "quickstart: the block no longer starts with the demo" >&2; exit 1; }
fail=0
for line in "${lines[@]:1}"; do
  echo "quickstart: \$ $line"
  # Exports stay in this shell for the lines after them; the rest run with their output kept.
  if [[ $line == export\ * ]]; then eval "$line"; continue; fi
  out=$(eval "$line" 2>&1); rc=$?
  printf '%s\n' "$out" | head -20 | sed 's/^/  /'
  case $line in
    *"refused by the API server"*)
      if [ $rc -eq 0 ] || ! grep -q 'canary.version must differ from stable' <<< "$out"; then
        echo "quickstart: FAIL: expected the API server to refuse it (rc=$rc)"; fail=1
      fi ;;
    *chat/completions*)
      if [ $rc -ne 0 ] || ! grep -q '"choices"' <<< "$out"; then
        echo "quickstart: FAIL: no chat completion (rc=$rc)"; fail=1
      fi ;;
    *) [ $rc -eq 0 ] || { echo "quickstart: FAIL: exit status $rc"; fail=1; } ;;
  esac
done
[ $fail = 0 ] && echo "quickstart: every line of the README's Quickstart did what it says"
exit $fail
