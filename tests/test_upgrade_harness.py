"""The upgrade suite's pure parts: schema normalisation and which pairs each release's cell runs."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from compat_tests.schema import differences, normalise
from compat_tests.upgrade import RELEASES, Side, pairs_for, selected_pairs
from ketta_build.errors import KettaError
from ketta_build.suites import project_suites

DUMP = """--
-- PostgreSQL database dump
--
\\restrict abcdef
SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

CREATE TABLE public.conversations (
    id character varying NOT NULL,
    agent_id character varying NOT NULL,
    summary character varying
);

CREATE INDEX ix_conversations_agent_id ON public.conversations USING btree (agent_id);

ALTER TABLE ONLY public.conversations
    ADD CONSTRAINT conversations_pkey PRIMARY KEY (id);
"""

# The same objects, as an upgraded database prints them: a column added last, statements reordered.
REORDERED = """\\restrict 123456
ALTER TABLE ONLY public.conversations
    ADD CONSTRAINT conversations_pkey PRIMARY KEY (id);

CREATE TABLE public.conversations (
    id character varying NOT NULL,
    summary character varying,
    agent_id character varying NOT NULL
);

CREATE INDEX ix_conversations_agent_id ON public.conversations USING btree (agent_id);
"""


def test_order_of_statements_and_columns_is_ignored():
    assert differences(DUMP, REORDERED) == []


def test_a_missing_index_or_column_is_reported():
    upgraded = REORDERED.replace("CREATE INDEX ix_conversations_agent_id ON public.conversations USING btree (agent_id);\n", "")
    upgraded = upgraded.replace("    summary character varying,\n", "")
    found = differences(DUMP, upgraded)
    assert "-CREATE INDEX ix_conversations_agent_id ON public.conversations USING btree (agent_id)" in found
    assert "-TABLE public.conversations :: summary character varying" in found
    assert all(line.startswith("-") for line in found)


def test_a_changed_foreign_key_action_is_reported():
    before = DUMP + "ALTER TABLE ONLY public.steps\n    ADD CONSTRAINT fk_steps_organization_id FOREIGN KEY (provider_id) REFERENCES public.providers(id) ON DELETE RESTRICT;\n"
    after = before.replace("ON DELETE RESTRICT", "ON DELETE SET NULL")
    assert len(differences(before, after)) == 2


def test_comments_settings_and_restrict_keys_are_not_schema():
    lines = normalise(DUMP)
    assert not [line for line in lines if line.startswith(("--", "\\", "SET ", "SELECT pg_catalog"))]


@pytest.mark.parametrize("version", RELEASES)
def test_every_release_runs_the_four_kinds_of_pair(version):
    pairs = pairs_for(version)
    kinds = {(p.start.flavour, p.end.flavour) for p in pairs}
    assert {("stock", "ketta"), ("stale", "ketta"), ("ketta", "stock")} <= kinds
    assert all(p.end.version == version for p in pairs), "a cell only upgrades to its own release"
    assert len({p.id for p in pairs}) == len(pairs)
    if version != RELEASES[0]:
        previous = RELEASES[RELEASES.index(version) - 1]
        assert any(p.start == Side(previous, "ketta") and p.end == Side(version, "ketta") for p in pairs)


def test_the_default_run_crosses_the_revisions_of_0_16_7_and_moves_stock_to_ketta():
    ids = {p.id for p in pairs_for("0.16.8")}
    assert {"ketta0.16.5-to-ketta0.16.8", "stock0.16.8-to-ketta0.16.8", "ketta0.14.0-to-ketta0.16.8",
            "ketta0.16.2-to-ketta0.16.8"} <= ids
    assert "stale0.16.5-to-ketta0.16.7" in {p.id for p in pairs_for("0.16.7")}
    ci = {p.id for p in selected_pairs("0.16.8", "ci")}
    assert ci == {"ketta0.16.5-to-ketta0.16.8", "stock0.16.8-to-ketta0.16.8", "stale0.16.5-to-ketta0.16.8",
                  "ketta0.16.8-to-stock0.16.8"}
    with pytest.raises(KettaError, match="all.*ci"):
        selected_pairs("0.16.8", "some")


def test_tox_has_a_cell_for_every_suite():
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(Path(__file__).resolve().parent.parent / "tox.ini")
    env_list = tox["tox"]["env_list"]
    for suite in project_suites(Path(__file__).resolve().parent.parent).names:
        assert suite in env_list, f"tox.ini has no {suite} factor"
        assert f"{suite}: KETTA_SUITE = {suite}" in tox["testenv"]["set_env"]
