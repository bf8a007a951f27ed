"""Every `sdtp` command's --help states each option's default once, and never a meaningless `None`."""
import argparse
import re

from sdtp_kernels.cli import build_parser


def test_every_command_help_states_defaults_once():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        text = " ".join(parser.format_help().split())
        assert "(default: None)" not in text and "(default: )" not in text, name
        for option in re.split(r" (?=--?[a-z])", text):
            assert option.count("(default") <= 1, (name, option)
