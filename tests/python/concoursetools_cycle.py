"""Drives lockstep's resource executables through an independent harness,
concoursetools' FileTestResourceWrapper, which runs any check/in/out executables exactly as
Concourse does (stdin JSON, the directory as $1, one JSON value on stdout, stderr captured,
mocked BUILD_* variables for in/out, no PATH).

Usage: concoursetools_cycle.py ASSETS_DIR SOURCE_JSON_FILE
The cycle: check (empty) -> out backup -> check (new version) -> in (files verified) ->
out backup -> out prune -> check (the pruned version gone, the given one kept while it
exists). Exits non-zero with a message on the first surprise.
"""
import json
import sys
import time
from pathlib import Path

from concoursetools.testing import FileTestResourceWrapper


def main() -> None:
    assets, source_file = Path(sys.argv[1]), Path(sys.argv[2])
    source = json.loads(source_file.read_text())
    wrapper = FileTestResourceWrapper.from_assets_dir(source, assets)

    assert wrapper.fetch_new_versions() == [], "check on an empty store must return []"

    with wrapper.capture_debugging() as log:
        first, metadata = wrapper.publish_new_version({"action": "backup"})
    assert "lock window" in log.value, "the put log shows the timings"
    names = {m["name"] for m in metadata}
    assert {"size stored", "codec", "encrypted", "lock-free", "instances and jobs"} <= names, names
    assert wrapper.fetch_new_versions() == [first]

    with wrapper.capture_directory_state() as state:
        got, _ = wrapper.download_version(first)
    assert got == first
    files = set(state.final_state.keys())
    assert {"metadata", "lockstep.json", "version"} <= files, files
    assert any(f.endswith(".tar") for f in files), files
    assert state.final_state["version"].strip() == first["artifact"]

    time.sleep(1.1)  # a distinct second in the next artifact's name
    second, _ = wrapper.publish_new_version({"action": "backup"})
    assert wrapper.fetch_new_versions(first) == [first, second]

    pruned, metadata = wrapper.publish_new_version({"action": "prune"})
    assert pruned == second, pruned
    assert {m["name"]: m["value"] for m in metadata}["deleted"] == "1", metadata
    assert wrapper.fetch_new_versions(first) == [second], "the pruned version must be gone"
    assert wrapper.fetch_new_versions(second) == [second]
    print("concoursetools cycle ok:", first["artifact"], second["artifact"])


if __name__ == "__main__":
    main()
