"""Tables stay bounded: packages no list holds are pruned where lists are, tasks are capped.

The package prune runs in the transaction that drops lists (a mirror update switching,
a drop), so `packages` always holds exactly what the lists hold. A mirror update stores
its packages and list first, downloads, and switches later: the list it has not switched
to yet is held for it, so a prune made meanwhile by another process (here: dropping a
mirror whose packages the update shares) never takes rows the update is about to name.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from array import array

from tests.support import examples
from tests.test_races import Race, finish, race, start, start_py  # noqa: F401  (the fixture)


def listed(world: Race) -> set[int]:
    ids: set[int] = set()
    for (blob,) in world.query("SELECT ids FROM package_lists"):
        values = array("q")
        values.frombytes(zlib.decompress(blob))
        ids.update(values)
    return ids


def stored(world: Race) -> int:
    return world.query("SELECT count(*) FROM packages")[0][0]


def verify(world: Race) -> None:
    out = subprocess.run([sys.executable, "-m", "reconciler", "--root", str(world.root), "verify"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_packages_hold_exactly_what_the_lists_hold_after_updates_and_drops(race):  # noqa: F811
    snap = "---\n" + "apiVersion: reconciler/v1\nkind: Snapshot\nmetadata: {{name: {0}}}\nspec: {{mirror: m}}\n"
    race.apply(race.mirror() + snap.format("s1"))
    first = stored(race)
    newer = examples.example_builder()  # the next day: hello replaced, tinymta gone
    newer.add("hello", "2.11-1", depends="libgreet1 (>= 1.1)")
    newer.remove("tinymta")
    newer.build(race.up.archive.root, distribution="stable", sign_with=race.up.key)
    race.apply(race.mirror() + snap.format("s1") + snap.format("s2"))
    assert stored(race) == len(listed(race)) == first + 1  # s1 keeps tinymta and the old hello
    race.apply(race.mirror() + snap.format("s2"))  # s1 dropped: what only it held goes with it
    assert stored(race) == len(listed(race)) < first + 1
    race.apply(race.mirror(extra="  filter: hello\n") + snap.format("s2"))  # the mirror narrowed
    assert stored(race) == len(listed(race))
    race.apply(race.mirror("other"))  # m and s2 dropped, another mirror created
    assert stored(race) == len(listed(race)) == race.query("SELECT count FROM package_lists")[0][0]
    verify(race)


def test_a_prune_during_an_update_never_takes_rows_the_update_will_name(race):  # noqa: F811
    race.apply(race.mirror("b", extra="  filter: hello\n"))  # b holds the hello rows
    race.slow(3.0)
    a = start(race.root, "apply", "-f", str(race.specs("a", race.mirror("b", extra="  filter: hello\n")
                                                           + "---\n" + race.mirror("a"))))
    race.wait_for_downloads()  # a stored its packages (hello's rows are b's) and is downloading
    drop = start_py(race.root, """
        from reconciler.actions import mirrors
        print(mirrors.drop(ctx, "b"))
    """)
    code, out = finish(drop)
    assert code == 0, out
    assert race.query("SELECT count(*) FROM mirrors WHERE name = 'a'") == [(0,)], "a finished first: no race"
    race.up.server.reset()
    code, out = finish(a)
    assert code == 0, out
    [(count,)] = race.query("SELECT l.count FROM mirrors m JOIN package_lists l ON l.digest = m.list_digest"
                            " WHERE m.name = 'a'")
    ids = listed(race)
    assert len(ids) == count == stored(race)
    names = {r[0] for r in race.query("SELECT name FROM packages")}
    assert "hello" in names
    verify(race)


def test_the_task_table_keeps_the_last_thousand(race):  # noqa: F811
    race.apply(race.mirror())
    # A long history, as months of serve leave it (one portable statement for 1500 rows).
    race.query("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)"
               " INSERT INTO tasks (name, resources, state, created_at)"
               " SELECT 'old ' || i, '[]', 'succeeded', '' FROM n")
    race.apply(race.mirror())
    [(count, newest, oldest)] = race.query("SELECT count(*), max(id), min(id) FROM tasks")
    assert count <= 1001
    assert newest - oldest <= 1000
    assert race.query("SELECT state FROM tasks WHERE id = (SELECT max(id) FROM tasks)") == [("succeeded",)]
