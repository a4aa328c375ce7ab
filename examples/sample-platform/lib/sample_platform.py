"""What the sample platform's API (api.py) and its integrity checker (check.py) share: the
configuration the installer writes beside the cloud_controller job, the database schema, and
where droplets live in the blobstore."""

import os
import shlex

import psycopg

CC_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    guid uuid PRIMARY KEY,
    name text NOT NULL,
    droplet_guid uuid NOT NULL,   -- the droplet is a file in the blobstore
    state text NOT NULL
);
CREATE TABLE IF NOT EXISTS spaces (
    guid uuid PRIMARY KEY,
    name text NOT NULL,
    owner_user_guid uuid NOT NULL -- a user in UAA's database
);
"""

UAA_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    guid uuid PRIMARY KEY,
    name text
);
CREATE TABLE IF NOT EXISTS credentials (
    user_guid uuid PRIMARY KEY,   -- deliberately no foreign key: the checker looks for orphans
    password_hash text NOT NULL
);
"""


def read_env(path):
    """Reads KEY='value' lines (as the installer writes them, shell-quoted)."""
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, raw = line.partition("=")
            words = shlex.split(raw)
            values[key] = words[0] if words else ""
    return values


class Config:
    """The cloud_controller job's configuration: its own database (PG*), UAA's database
    (UAA_PG*) and the blobstore's droplet directory as this machine sees it (BLOBSTORE_DIR).
    On a real platform the last two would be UAA's URL and the blobstore's WebDAV endpoint.
    UAA_LOCK_FILE and BLOBSTORE_LOCK_FILE (optional) are where those jobs' pre-backup-lock
    scripts record that they are locked: the API's writes to a locked store fail."""

    def __init__(self, vcap):
        self.vcap = os.path.abspath(vcap)
        env = read_env(os.path.join(self.vcap, "jobs", "cloud_controller", "config", "env"))
        missing = [k for k in ("PGDATABASE", "UAA_PGDATABASE", "BLOBSTORE_DIR") if not env.get(k)]
        if missing:
            raise ValueError(f"cloud_controller config/env lacks {', '.join(missing)}")
        self.cc = self._conninfo(env, "")
        self.uaa = self._conninfo(env, "UAA_")
        self.blobstore = env["BLOBSTORE_DIR"]
        # Optional: the stores' lock files (ROOT/var/vcap/data/<job>/locked on their instances).
        # While one exists that store refuses writes, as a stopped UAA or blobstore would.
        self.uaa_lock_file = env.get("UAA_LOCK_FILE") or None
        self.blobstore_lock_file = env.get("BLOBSTORE_LOCK_FILE") or None

    @staticmethod
    def _conninfo(env, prefix):
        def get(key, default=None):
            return env.get(prefix + key) or env.get(key) or default

        return {
            "host": get("PGHOST", "127.0.0.1"),
            "port": get("PGPORT", "5432"),
            "user": get("PGUSER"),
            "password": get("PGPASSWORD"),
            "dbname": env[prefix + "PGDATABASE"],
        }

    def connect_cc(self):
        return psycopg.connect(**self.cc, autocommit=True)

    def connect_uaa(self):
        return psycopg.connect(**self.uaa, autocommit=True)

    @property
    def droplets(self):
        return os.path.join(self.blobstore, "droplets")

    def droplet_path(self, guid):
        guid = str(guid)
        return os.path.join(self.droplets, guid[:2], guid)
