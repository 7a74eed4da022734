#!/usr/bin/env bash
# Make sure the database servers the tests use are installed and running on
# 127.0.0.1: PostgreSQL (db `test`, user root, trust) and MariaDB (db `test`,
# root without password), Redis (jobboard, no persistence), and ZooKeeper
# (:2181) and etcd (:2379), the other two jobboards taskflow offers.
# Idempotent; no systemd needed.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
apt_install() {
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
wait_port() {
    for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.2; done
    echo "services: nothing listens on 127.0.0.1:$1 after 20 s" >&2; return 1
}

if ! port_open 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    ver=$(ls /etc/postgresql | sort -n | tail -1)
    conf=/etc/postgresql/$ver/main
    grep -q "computeflow-tests" "$conf/pg_hba.conf" || {
        printf '# computeflow-tests\nhost all all 127.0.0.1/32 trust\nlocal all all trust\n' \
            | cat - "$conf/pg_hba.conf" > /tmp/pg_hba && $SUDO cp /tmp/pg_hba "$conf/pg_hba.conf"; }
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    wait_port 5432
fi
psql -h 127.0.0.1 -U root -d test -c 'select 1' >/dev/null 2>&1 || {
    $SUDO -u postgres psql -qc "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='root') THEN CREATE ROLE root SUPERUSER LOGIN; END IF; END\$\$;"
    $SUDO -u postgres createdb -O root test 2>/dev/null || true; }
# The tests run several conductor clusters at once (two pytest workers, up to
# four conductor processes each, each up to 52 connections: docs/scale-out.md);
# PostgreSQL's default of 100 connections refused some under load.
PG_CONNECTIONS=400
if [ "$(psql -h 127.0.0.1 -U root -d test -Atc 'show max_connections')" -lt $PG_CONNECTIONS ]; then
    psql -h 127.0.0.1 -U root -d test -qc "ALTER SYSTEM SET max_connections = $PG_CONNECTIONS"
    ver=$(ls /etc/postgresql | sort -n | tail -1)
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main restart
    wait_port 5432
fi

if ! port_open 3306; then
    command -v mariadbd >/dev/null || apt_install mariadb-server
    $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
    $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_port 3306
fi
mariadb -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null 2>&1 || \
    $SUDO mariadb -e "CREATE DATABASE IF NOT EXISTS test; ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;"
if ! port_open 6379; then  # the scale-out conductors' jobboard
    command -v redis-server >/dev/null || apt_install redis-server
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    port_open 6379 || $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_port 6379
fi
if ! port_open 2181; then  # ZooKeeper jobboard (taskflow's impl_zookeeper, client kazoo)
    [ -x /usr/share/zookeeper/bin/zkServer.sh ] || apt_install zookeeper default-jre-headless
    $SUDO mkdir -p /var/tmp/computeflow-zookeeper /var/log/zookeeper
    printf 'tickTime=2000\ndataDir=/var/tmp/computeflow-zookeeper\nclientPort=2181\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=srvr,envi,ruok\n' \
        > /var/tmp/computeflow-zookeeper/zoo.cfg
    $SUDO env ZOOCFGDIR=/var/tmp/computeflow-zookeeper ZOO_LOG_DIR=/var/log/zookeeper \
        /usr/share/zookeeper/bin/zkServer.sh start /var/tmp/computeflow-zookeeper/zoo.cfg >/dev/null 2>&1
    wait_port 2181
fi
if ! port_open 2379; then  # etcd jobboard (taskflow's impl_etcd, client etcd3gw over the v3 HTTP gateway)
    command -v etcd >/dev/null || apt_install etcd-server
    $SUDO mkdir -p /var/tmp/computeflow-etcd
    $SUDO start-stop-daemon --start --oknodo --background --exec "$(command -v etcd)" -- \
        --data-dir /var/tmp/computeflow-etcd/data --listen-client-urls http://127.0.0.1:2379 \
        --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380
    wait_port 2379
fi
echo "services: PostgreSQL :5432, MariaDB :3306, Redis :6379, ZooKeeper :2181 and etcd :2379 ready"
