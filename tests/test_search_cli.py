"""`rank-search search` CLI pieces that need no Ray: the resume hint after an interrupt."""

from __future__ import annotations

import argparse

from rank_search.cli.search import resume_command


def test_the_resume_hint_is_our_command_not_rays() -> None:
    args = argparse.Namespace(study="studies/my study.yaml", out="runs/q", address=None)
    assert resume_command(args) == "rank-search search 'studies/my study.yaml' -o runs/q --resume"
    args.address = "auto"
    assert resume_command(args).endswith("--resume --address auto")
