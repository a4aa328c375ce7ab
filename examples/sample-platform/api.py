#!/usr/bin/env python3
"""The sample platform's API, and the clients that keep it busy.

    api.py VCAP_DIR [--seed N] [--hash-seconds S] [--think-seconds S]

VCAP_DIR is the api instance's /var/vcap as this machine sees it. The configuration is
VCAP_DIR/jobs/cloud_controller/config/env (see lib/sample_platform.py). Two client threads
call the API continuously:

- apps: push an app (write its droplet into the blobstore, then insert the app row), delete an
  app (delete the row, then the droplet), restart an app (update its state);
- users: create a user (insert the user row in UAA's database, hash the password, insert the
  credentials row: two steps, so a backup that does not lock can catch a half-created user),
  create a space owned by a user (Cloud Controller's database), delete a user (its spaces,
  its credentials, then the user row).

UAA and the blobstore refuse writes while their own lock is held (when the configuration
names their lock files): an operation that meets a locked store fails half-way and logs
`failed`, as it would against a stopped UAA. That is why cloud_controller must be locked
before them (its metadata says so): then no operation is in flight when they lock.

The lock protocol (the other half is lib/bbr.sh, used by the cloud_controller job's scripts):
a control thread polls VCAP_DIR/data/cloud_controller/lock-request every 2 ms. When a request
appears, the API stops admitting operations (clients are answered "unavailable" and retry),
waits until no operation is in flight, and writes the request's token to lock-ack. When the
request is gone it admits operations again and removes lock-ack. Its log,
VCAP_DIR/sys/log/cloud_controller/api.log, has one line per event, `<epoch> <event> k=v ...`:

    <t0> unavailable lock=<token> in_flight=<n> drained=<s> ops=<n>   (t0: when it stopped admitting)
    <t1> available downtime=<t1 - t0> refused=<n> ops=<n>             (t1: when it admitted again)

so the API's own downtime per lock is in its log. The pid is in
VCAP_DIR/sys/run/cloud_controller/api.pid. SIGTERM or SIGINT stops it after the operations
in flight have finished.
"""

import argparse
import os
import random
import signal
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from sample_platform import CC_SCHEMA, UAA_SCHEMA, Config  # noqa: E402

CONTROL_POLL_SECONDS = 0.002
RETRY_SECONDS = 0.01  # a refused client retries this often


class StoreLocked(Exception):
    """A write to a store whose lock is held: UAA or the blobstore answered "unavailable"."""


class Log:
    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.f = open(path, "a", encoding="utf-8", buffering=1)
        self.lock = threading.Lock()

    def event(self, name, at=None, **fields):
        at = time.time() if at is None else at
        kv = " ".join(f"{k}={v}" for k, v in fields.items())
        with self.lock:
            self.f.write(f"{at:.6f} {name} {kv}".rstrip() + "\n")


class Gate:
    """Admits API operations unless paused; pausing waits until none is in flight."""

    def __init__(self):
        self.cond = threading.Condition()
        self.paused = False
        self.stopping = False
        self.in_flight = 0
        self.refused = 0
        self.ops = 0

    def enter(self):
        """Blocks (answering "unavailable" every RETRY_SECONDS) while paused. False: stop."""
        with self.cond:
            while self.paused and not self.stopping:
                self.refused += 1
                self.cond.wait(RETRY_SECONDS)
            if self.stopping:
                return False
            self.in_flight += 1
            return True

    def leave(self, done=True):
        with self.cond:
            self.in_flight -= 1
            self.ops += 1 if done else 0
            self.cond.notify_all()

    def pause(self):
        """Stops admitting; returns (when it stopped admitting, operations then in flight)
        once none is in flight."""
        with self.cond:
            self.paused = True
            at, in_flight = time.time(), self.in_flight
            while self.in_flight:
                self.cond.wait()
            return at, in_flight

    def resume(self):
        with self.cond:
            self.paused = False
            self.refused_at_resume, self.refused = self.refused, 0
            self.cond.notify_all()
            return time.time()

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


class Api:
    def __init__(self, cfg, args):
        self.cfg = cfg
        self.args = args
        vcap = cfg.vcap
        self.control = os.path.join(vcap, "data", "cloud_controller")
        self.pid_file = os.path.join(vcap, "sys", "run", "cloud_controller", "api.pid")
        self.log = Log(os.path.join(vcap, "sys", "log", "cloud_controller", "api.log"))
        self.gate = Gate()
        self.stop_event = threading.Event()
        self.failed = None

    # --- the lock protocol -------------------------------------------------------------

    def read_request(self):
        try:
            with open(os.path.join(self.control, "lock-request"), encoding="utf-8") as f:
                return f.read().strip() or "?"
        except FileNotFoundError:
            return None

    def write_ack(self, token):
        tmp = os.path.join(self.control, "lock-ack.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        os.replace(tmp, os.path.join(self.control, "lock-ack"))

    def control_step(self, state):
        token = self.read_request()
        if token is not None:
            if not state.get("paused"):
                if self.args.broken_lock:
                    # Deliberately wrong (see --broken-lock): acknowledge, keep writing.
                    state["since"], in_flight, drained = time.time(), self.gate.in_flight, 0.0
                else:
                    state["since"], in_flight = self.gate.pause()
                    drained = time.time() - state["since"]
                self.log.event("unavailable", at=state["since"], lock=token, in_flight=in_flight,
                               drained=f"{drained:.6f}", ops=self.gate.ops)
                state["paused"] = True
            if token != state.get("acked"):
                self.write_ack(token)
                state["acked"] = token
        elif state.get("paused"):
            at = self.gate.resume() if not self.args.broken_lock else time.time()
            self.log.event("available", at=at, downtime=f"{at - state['since']:.6f}",
                           refused=getattr(self.gate, "refused_at_resume", 0), ops=self.gate.ops)
            state["paused"] = False
            state["acked"] = None
            try:
                os.unlink(os.path.join(self.control, "lock-ack"))
            except FileNotFoundError:
                pass

    def control_loop(self, state):
        try:
            while not self.stop_event.is_set():
                self.control_step(state)
                self.stop_event.wait(CONTROL_POLL_SECONDS)
        except Exception as e:  # the lock protocol must not die silently
            self.fail(f"control: {e!r}")

    # --- the clients ---------------------------------------------------------------------

    def fail(self, why):
        self.log.event("error", what=why.replace("\n", " "))
        self.failed = why
        self.stop_event.set()
        self.gate.stop()

    def client_loop(self, name, step):
        rng = random.Random(f"{self.args.seed}-{name}")
        conns = {}
        errors = 0
        while self.gate.enter():
            ok = False
            try:
                if not conns:
                    conns = {"cc": self.cfg.connect_cc(), "uaa": self.cfg.connect_uaa()}
                step(rng, conns)
                ok = True
                errors = 0
            except StoreLocked as e:
                # The operation failed half-way, as it would against a stopped UAA or
                # blobstore. With the lock order right (the API pauses before the stores
                # lock) this never happens.
                self.log.event("failed", client=name, store_locked=e)
            except Exception as e:
                # A database restart or a restore under a paused API: reconnect and go on,
                # but not forever.
                errors += 1
                self.log.event("error", client=name, what=repr(e).replace("\n", " "))
                for c in conns.values():
                    c.close()
                conns = {}
                if errors >= 20:
                    self.gate.leave(done=False)
                    self.fail(f"{name}: 20 consecutive errors, last {e!r}")
                    return
            self.gate.leave(done=ok)
            if self.args.think_seconds:
                self.stop_event.wait(self.args.think_seconds)

    def check_store(self, lock_file, store):
        if lock_file and os.path.exists(lock_file):
            raise StoreLocked(store)

    def apps_step(self, rng, c):
        cc = c["cc"]
        (count,) = cc.execute("SELECT count(*) FROM apps").fetchone()
        r = rng.random()
        push_p = 0.7 if count < self.args.apps else 0.3
        if r < push_p:
            # Push: the droplet first (a new file renamed into place), then the row.
            droplet = uuid.uuid4()
            self.check_store(self.cfg.blobstore_lock_file, "blobstore")
            uploads = os.path.join(self.cfg.blobstore, "uploads")
            os.makedirs(uploads, exist_ok=True)
            tmp = os.path.join(uploads, str(droplet))
            with open(tmp, "wb") as f:
                f.write(rng.randbytes(rng.randint(256, 4096)))
            final = self.cfg.droplet_path(droplet)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp, final)
            cc.execute("INSERT INTO apps (guid, name, droplet_guid, state) VALUES (%s, %s, %s, 'STARTED')",
                       (uuid.uuid4(), f"app-{rng.randrange(10**6)}", droplet))
        elif r < 0.9:
            # Delete: the row first, then the droplet.
            row = cc.execute("DELETE FROM apps WHERE guid = (SELECT guid FROM apps ORDER BY random() LIMIT 1)"
                             " RETURNING droplet_guid").fetchone()
            if row:
                self.check_store(self.cfg.blobstore_lock_file, "blobstore")
                os.unlink(self.cfg.droplet_path(row[0]))
        else:
            cc.execute("UPDATE apps SET state = CASE state WHEN 'STARTED' THEN 'STOPPED' ELSE 'STARTED' END"
                       " WHERE guid = (SELECT guid FROM apps ORDER BY random() LIMIT 1)")

    def users_step(self, rng, c):
        cc, uaa = c["cc"], c["uaa"]
        (count,) = uaa.execute("SELECT count(*) FROM users").fetchone()
        r = rng.random()
        create_p = 0.6 if count < self.args.users else 0.25
        if r < create_p:
            # Create a user: two steps, with the password hashing between them.
            guid = uuid.uuid4()
            self.check_store(self.cfg.uaa_lock_file, "uaa")
            uaa.execute("INSERT INTO users (guid, name) VALUES (%s, %s)", (guid, f"user-{rng.randrange(10**6)}"))
            time.sleep(self.args.hash_seconds)  # stands in for bcrypt
            self.check_store(self.cfg.uaa_lock_file, "uaa")
            uaa.execute("INSERT INTO credentials (user_guid, password_hash) VALUES (%s, %s)",
                        (guid, f"$2a$10${rng.randbytes(16).hex()}"))
            return
        owner = uaa.execute("SELECT u.guid FROM users u JOIN credentials c ON c.user_guid = u.guid"
                            " ORDER BY random() LIMIT 1").fetchone()
        if owner is None:
            return
        if r < 0.8:
            cc.execute("INSERT INTO spaces (guid, name, owner_user_guid) VALUES (%s, %s, %s)",
                       (uuid.uuid4(), f"space-{rng.randrange(10**6)}", owner[0]))
        else:
            # Delete a user: its spaces, its credentials, then the user.
            cc.execute("DELETE FROM spaces WHERE owner_user_guid = %s", owner)
            self.check_store(self.cfg.uaa_lock_file, "uaa")
            uaa.execute("DELETE FROM credentials WHERE user_guid = %s", owner)
            uaa.execute("DELETE FROM users WHERE guid = %s", owner)

    # --- running -------------------------------------------------------------------------

    def run(self):
        os.makedirs(self.control, exist_ok=True)
        os.makedirs(os.path.dirname(self.pid_file), exist_ok=True)
        with open(self.pid_file + ".tmp", "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(self.pid_file + ".tmp", self.pid_file)
        self.log.event("started", pid=os.getpid())
        try:
            # From here on a lock script waits for this process: honour a request already
            # there before writing anything, migrations included.
            state = {}
            self.control_step(state)
            control = threading.Thread(target=self.control_loop, args=(state,), daemon=True)
            control.start()
            if not self.gate.enter():
                return 1
            try:
                with self.cfg.connect_cc() as cc:
                    cc.execute(CC_SCHEMA)
                with self.cfg.connect_uaa() as uaa:
                    uaa.execute(UAA_SCHEMA)
            finally:
                self.gate.leave()
            clients = [
                threading.Thread(target=self.client_loop, args=("apps", self.apps_step)),
                threading.Thread(target=self.client_loop, args=("users", self.users_step)),
            ]
            for t in clients:
                t.start()
            self.log.event("ready")
            self.stop_event.wait()
            self.gate.stop()
            for t in clients:
                t.join()
            self.log.event("stopped", ops=self.gate.ops)
            return 1 if self.failed else 0
        finally:
            try:
                os.unlink(self.pid_file)
            except FileNotFoundError:
                pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("vcap", help="the api instance's /var/vcap as this machine sees it")
    p.add_argument("--seed", default="0")
    p.add_argument("--hash-seconds", type=float, default=0.05, help="time to hash a password (default 0.05)")
    p.add_argument("--think-seconds", type=float, default=0.005, help="pause between a client's calls")
    p.add_argument("--apps", type=int, default=150, help="about how many apps to keep")
    p.add_argument("--users", type=int, default=40, help="about how many users to keep")
    p.add_argument("--broken-lock", action="store_true",
                   help="WRONG on purpose: acknowledge lock requests but keep writing, to see the "
                        "consistency test catch a broken lock protocol")
    args = p.parse_args()
    api = Api(Config(args.vcap), args)
    signal.signal(signal.SIGTERM, lambda *_: api.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: api.stop_event.set())
    sys.exit(api.run())


if __name__ == "__main__":
    main()
