#!/bin/sh
# bench_upload.sh - the issue-8 upload benchmark: how long `curl -T FILE
# -X POST /v1/models` takes against a real daemon, next to what storing
# and hashing the same bytes costs with no HTTP in between, and (when
# nginx is there) next to an nginx PUT on loopback.  A benchmark, not a
# test: make check does not run it; it prints a table and exits 0 whatever
# the figures.
#
#   tests/bench/bench_upload.sh [FILE]
#
# FILE must be a model slimd accepts (safetensors); without it a 1 GiB
# safetensors file of random bytes is made in the temp dir.  Environment:
# SLIMD_BIN (default ./slimd, else $SLIMD_BUILDDIR/slimd), NGINX_BIN (an
# nginx binary with the dav module; default the one on PATH), BENCH_RUNS
# (default 3).  Everything lives in one temp dir (under $TMPDIR, so on the
# disk being measured), removed at exit.  Run it on an idle machine: the
# disk is shared, and a concurrent build or sync skews every figure.  The
# table shows each run and the best; the first run is often the slowest.
set -eu

slimd=${SLIMD_BIN:-${SLIMD_BUILDDIR:-.}/slimd}
runs=${BENCH_RUNS:-3}
nginx=${NGINX_BIN:-$(command -v nginx || true)}
unset NGINX   # nginx reads inherited sockets from it

if [ ! -x "$slimd" ]; then
    echo "bench_upload.sh: $slimd not built (run make, or set SLIMD_BIN)" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/slimd-bench-upload-XXXXXX")
slimd_pid=
nginx_pid=
cleanup() {
    [ -n "$slimd_pid" ] && kill "$slimd_pid" 2>/dev/null && wait "$slimd_pid" 2>/dev/null
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

if [ $# -ge 1 ]; then
    file=$1
else
    # one U8 tensor filling 1 GiB exactly; the header is padded with
    # spaces to a multiple of 8, as the safetensors format allows
    file=$work/bench.safetensors
    echo "making a 1 GiB safetensors file in $work ..." >&2
    python3 - "$file" <<'EOF'
import json, struct, sys
total = 1 << 30
hdr = b""
for _ in range(2):
    n = total - 8 - len(hdr)
    hdr = json.dumps({"bench": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(hdr)) + hdr)
EOF
    head_bytes=$(stat -c %s "$file")
    head -c $(( (1 << 30) - head_bytes )) /dev/urandom >> "$file"
fi
size=$(stat -c %s "$file")
cat "$file" > /dev/null   # every run reads it from the page cache

# results: one line per measurement, "label<TAB>seconds"
results=$work/results
: > "$results"
record() { printf '%s\t%s\n' "$1" "$2" >> "$results"; echo "  $1: $2 s" >&2; }

# ---- slimd: POST -T, hashed, fsynced, renamed ----
mkdir "$work/slimd"
"$slimd" serve --listen 127.0.0.1:0 --data-dir "$work/slimd/data" --workers 1 \
    2> "$work/slimd/log" &
slimd_pid=$!
port=
for _ in $(seq 100); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$work/slimd/log")
    [ -n "$port" ] && break
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "bench_upload.sh: slimd did not start:" >&2
    cat "$work/slimd/log" >&2
    exit 1
fi
echo "slimd on port $port, $size bytes, $runs runs" >&2
for _ in $(seq "$runs"); do
    sync
    t=$(now)
    curl -sS --fail-with-body -o "$work/slimd/model.json" -T "$file" -X POST \
        "http://127.0.0.1:$port/v1/models?name=bench"
    record "slimd POST -T (sha256, fsync, rename)" "$(elapsed "$t")"
    # delete it, so that every run stores the blob anew (no dedup)
    id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' \
        "$work/slimd/model.json")
    curl -sS --fail-with-body -X DELETE "http://127.0.0.1:$port/v1/models/$id"
done
kill "$slimd_pid"
wait "$slimd_pid" || true
slimd_pid=

# ---- the same bytes with no HTTP ----
# sha256sum (coreutils) has no SHA-NI code here and is several times
# slower than OpenSSL's EVP, which slimd uses; both are shown.
for _ in $(seq "$runs"); do
    sync
    t=$(now)
    cat "$file" > "$work/x" && sha256sum "$work/x" > /dev/null && sync
    record "cat > x && sha256sum x && sync" "$(elapsed "$t")"
    rm -f "$work/x"
done
for _ in $(seq "$runs"); do
    sync
    t=$(now)
    cat "$file" > "$work/x" && openssl dgst -sha256 "$work/x" > /dev/null && sync
    record "cat > x && openssl sha256 x && sync" "$(elapsed "$t")"
    rm -f "$work/x"
done
for _ in $(seq "$runs"); do
    sync
    t=$(now)
    cat "$file" > "$work/x" && sync
    record "cat > x && sync (no hash)" "$(elapsed "$t")"
    rm -f "$work/x"
done

# ---- nginx PUT (dav module), body to client_body_temp then renamed ----
if [ -n "$nginx" ] && [ -x "$nginx" ]; then
    n=$work/nginx
    mkdir -p "$n/www" "$n/body" "$n/tmp" "$n/logs"
    nport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    user=
    [ "$(id -u)" -eq 0 ] && user="user root;"
    cat > "$n/nginx.conf" <<EOF
$user
daemon off;
worker_processes 1;
pid $n/nginx.pid;
error_log $n/logs/error.log;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $n/body;
    proxy_temp_path $n/tmp;
    fastcgi_temp_path $n/tmp;
    uwsgi_temp_path $n/tmp;
    scgi_temp_path $n/tmp;
    client_max_body_size 0;
    server {
        listen 127.0.0.1:$nport;
        location / { root $n/www; dav_methods PUT DELETE; }
    }
}
EOF
    "$nginx" -p "$n" -c "$n/nginx.conf" -e "$n/logs/error.log" &
    nginx_pid=$!
    up=
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$nport/" && up=1 && break
        sleep 0.1
    done
    [ -n "$up" ] || { echo "bench_upload.sh: nginx did not start" >&2; exit 1; }
    for _ in $(seq "$runs"); do
        sync
        t=$(now)
        curl -sS --fail-with-body -T "$file" "http://127.0.0.1:$nport/up.bin"
        record "nginx PUT (dav, no fsync)" "$(elapsed "$t")"
        sync
        record "nginx PUT, then sync" "$(elapsed "$t")"
        curl -sS --fail-with-body -X DELETE "http://127.0.0.1:$nport/up.bin"
    done
    kill "$nginx_pid"
    wait "$nginx_pid" || true
    nginx_pid=
else
    echo "(nginx not installed: no nginx PUT row; set NGINX_BIN=/path/to/nginx to add one)" >&2
    printf 'nginx PUT: not installed (set NGINX_BIN=)\t-\n' >> "$results"
fi

# ---- the table: each run, then the best ----
echo
echo "upload of $size bytes on loopback ($(uname -r), $(nproc) cores)"
awk -F '\t' -v runs="$runs" '
    !($1 in seen) { seen[$1] = 1; order[++n] = $1 }
    { t[$1] = t[$1] sprintf(" %6s", $2)
      if ($2 != "-" && (!($1 in best) || $2 + 0 < best[$1])) best[$1] = $2 + 0 }
    END {
        printf "%-40s", "seconds"
        for (i = 1; i <= runs; i++)
            printf " %6s", "run " i
        printf " %6s\n", "best"
        for (i = 1; i <= n; i++)
            printf "%-40s%s %6s\n", order[i], t[order[i]],
                   (order[i] in best) ? sprintf("%.2f", best[order[i]]) : "-"
    }' "$results"
