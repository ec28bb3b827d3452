#!/bin/sh
# nginx + nchan on loopback, for the fan-out bench (benches/fanout.rs).
#
#   run.sh install          apt-get install nginx-light libnginx-mod-nchan (Debian)
#   run.sh start DIR PORT   write DIR/nginx.conf, start nginx, print the master's pid
#   run.sh stop DIR         stop the nginx started in DIR, by the pid it wrote
#
# Only ever signals the pid in DIR/nginx.pid (never killall): the machine
# is shared.
set -eu

MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

case "${1:-}" in
install)
    if command -v nginx >/dev/null 2>&1 && [ -f "$MODULE" ]; then
        exit 0
    fi
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y nginx-light libnginx-mod-nchan
    ;;
start)
    dir=$2
    port=$3
    mkdir -p "$dir/tmp"
    # worker_processes 2: Debian's default (`auto`) on this 2-core machine,
    # and the same parallelism as patchfeed's 2 tokio workers.
    # The message buffer holds the 100,000-event replay (200,000 to spare);
    # messages never expire (timeout 0); the shared memory holds them.
    # `first_message newest`: a fresh subscriber waits for the next
    # message, as a fresh patchfeed client gets only new patches after its
    # snapshot (the default, `oldest`, would replay the buffer).
    cat >"$dir/nginx.conf" <<CONF
load_module $MODULE;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 16000;
    multi_accept on;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    nchan_max_reserved_memory 512M;
    nchan_message_buffer_length 200000;
    nchan_message_timeout 0;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location ~ ^/sub/([A-Za-z0-9_-]+)$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/pub/([A-Za-z0-9_-]+)$ {
            nchan_publisher;
            nchan_channel_id \$1;
        }
    }
}
CONF
    nginx -p "$dir" -c "$dir/nginx.conf" -t -q
    nginx -p "$dir" -c "$dir/nginx.conf"
    # nginx daemonizes; the master writes its pid.
    i=0
    while [ ! -s "$dir/nginx.pid" ] && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    cat "$dir/nginx.pid"
    ;;
stop)
    dir=$2
    [ -s "$dir/nginx.pid" ] || exit 0
    pid=$(cat "$dir/nginx.pid")
    kill -TERM "$pid" 2>/dev/null || exit 0
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
    ;;
*)
    echo "usage: $0 install | start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
