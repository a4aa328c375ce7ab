#!/usr/bin/env python3
"""Checks the referential integrity of a sample platform (typically one just restored).

    check.py VCAP_DIR

VCAP_DIR is the api instance's /var/vcap; its cloud_controller config/env names both
databases and the blobstore. Prints one line per violation on stdout, `<kind>: <detail>`:

    app-without-droplet       an app row whose droplet file is missing (a missing blob)
    droplet-without-app       a droplet file no app row refers to (an orphaned blob)
    user-without-name         a UAA user with no name
    user-without-credentials  a UAA user with no credentials row (a half-created user)
    credentials-without-user  credentials whose user row is missing
    space-owner-missing       a space whose owner is not a UAA user

and a summary on stderr. Exit status: 0 consistent, 1 violations found, 2 could not check.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from sample_platform import Config  # noqa: E402


def check(cfg):
    violations = []

    def report(kind, detail):
        violations.append((kind, detail))

    with cfg.connect_cc() as cc, cfg.connect_uaa() as uaa:
        apps = cc.execute("SELECT guid, name, droplet_guid FROM apps ORDER BY name").fetchall()
        spaces = cc.execute("SELECT guid, name, owner_user_guid FROM spaces ORDER BY name").fetchall()
        users = uaa.execute("SELECT guid, name FROM users").fetchall()
        creds = {r[0] for r in uaa.execute("SELECT user_guid FROM credentials")}

    droplets = set()
    if os.path.isdir(cfg.droplets):
        for _, _, files in os.walk(cfg.droplets):
            droplets.update(files)

    referenced = set()
    for guid, name, droplet in apps:
        referenced.add(str(droplet))
        if str(droplet) not in droplets or not os.path.isfile(cfg.droplet_path(droplet)):
            report("app-without-droplet", f"app {name} ({guid}) refers to droplet {droplet}, which is missing")
    for droplet in sorted(droplets - referenced):
        report("droplet-without-app", f"droplet {droplet} belongs to no app")

    user_guids = set()
    for guid, name in users:
        user_guids.add(guid)
        if not name:
            report("user-without-name", f"user {guid} has no name")
        if guid not in creds:
            report("user-without-credentials", f"user {name} ({guid}) has no credentials")
    for guid in sorted(creds - user_guids, key=str):
        report("credentials-without-user", f"credentials for user {guid}, who does not exist")
    for guid, name, owner in spaces:
        if owner not in user_guids:
            report("space-owner-missing", f"space {name} ({guid}) is owned by user {owner}, who does not exist")

    counts = f"{len(apps)} apps, {len(droplets)} droplets, {len(users)} users, {len(spaces)} spaces"
    return violations, counts


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        violations, counts = check(Config(sys.argv[1]))
    except Exception as e:
        print(f"check.py: could not check: {e}", file=sys.stderr)
        return 2
    for kind, detail in violations:
        print(f"{kind}: {detail}")
    print(f"check.py: {counts}: {len(violations) or 'no'} violation(s)", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
