#!/usr/bin/env bash
# Runs every fuzz target (or those named in FUZZ_TARGETS) for FUZZ_SECS seconds each, then
# prints executions, exec/s, new corpus entries and crashes per target. Called by `make fuzz`
# from the repository root, after cargo-fuzz was installed into tests/fuzz/.tools.
#
#   FUZZ_SECS=120            seconds per target
#   FUZZ_TARGETS="jwt ..."   targets to run (default: all of fuzz_targets/)
#   FUZZ_SANITIZER=address   -s of cargo fuzz: address (default) or none
#   FUZZ_ARGS="..."          more libFuzzer flags (e.g. -runs=1000000 instead of a time bound)
#
# The targets are built once (`cargo fuzz build`) and the built binaries run one after the other,
# as `cargo fuzz run` would run them (same -artifact_prefix and ASAN_OPTIONS) but without a
# rebuild between targets, so that every target tests the same snapshot of the tree. Committed
# seeds (corpus-seeds/<target>/) are copied into the gitignored working corpus
# (corpus/<target>/), which libFuzzer grows; crashes land in artifacts/<target>/, logs in
# logs/<target>.log. Exit status 1 if any target crashed (or could not run).
set -uo pipefail

FUZZ_DIR=tests/fuzz
cd "$(dirname "$0")/../.."
CARGO_FUZZ="${CARGO_FUZZ:-$FUZZ_DIR/.tools/bin/cargo-fuzz}"
SECS="${FUZZ_SECS:-120}"
SAN="${FUZZ_SANITIZER:-address}"
TARGETS="${FUZZ_TARGETS:-$(cd "$FUZZ_DIR/fuzz_targets" && ls ./*.rs | sed 's|^\./||; s|\.rs$||' | tr '\n' ' ')}"
# cargo-fuzz passes nightly-only flags (-Z sanitizer, -C passes=sancov-module ...) to cargo and
# rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
BUILD_FLAGS=(--fuzz-dir "$FUZZ_DIR" -s "$SAN" --debug-assertions)

echo ">> building fuzz targets (sanitizer $SAN, debug assertions on)"
"$CARGO_FUZZ" build "${BUILD_FLAGS[@]}" || exit 1
BIN_DIR="$FUZZ_DIR/target/$(rustc -vV | sed -n 's/^host: //p')/release"

mkdir -p "$FUZZ_DIR/logs"
# What libFuzzer writes for a finding (slow-unit-* files are not findings).
count_findings() { find "$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l; }
summary=()
failed=0
for t in $TARGETS; do
    corpus="$FUZZ_DIR/corpus/$t"
    artifacts="$FUZZ_DIR/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    cp -n "$FUZZ_DIR/corpus-seeds/$t"/* "$corpus"/ 2>/dev/null || true
    dict=()
    [ -f "$FUZZ_DIR/dict/$t.dict" ] && dict=("-dict=$FUZZ_DIR/dict/$t.dict")
    before=$(count_findings "$artifacts")
    log="$FUZZ_DIR/logs/$t.log"
    echo ">> fuzzing $t for ${SECS}s (log: $log)"
    start=$(date +%s)
    # shellcheck disable=SC2086
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0" \
    "$BIN_DIR/$t" -artifact_prefix="$artifacts/" \
        -max_total_time="$SECS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        "${dict[@]}" ${FUZZ_ARGS:-} "$corpus" >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    added=$(grep -o 'stat::new_units_added: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    crashes=$(( $(count_findings "$artifacts") - before ))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes="?"; fi
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "!! $t failed (exit $rc); last lines of $log:"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|deadly signal|timeout|out-of-memory' "$log" | head -20
    fi
    summary+=("$(printf '%-10s %12s %10s %8s %8s %7s' "$t" "${execs:-?}" "${rate:-?}" "${added:-?}" "$crashes" "${took}s")")
done

echo
echo "== fuzz summary (FUZZ_SECS=$SECS, sanitizer $SAN) =="
printf '%-10s %12s %10s %8s %8s %7s\n' target executions exec/s new crashes time
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    echo "crash reproducers are in $FUZZ_DIR/artifacts/<target>/; minimize one with"
    echo "  RUSTC_BOOTSTRAP=1 $CARGO_FUZZ tmin ${BUILD_FLAGS[*]} <target> <artifact>"
fi
exit "$failed"
