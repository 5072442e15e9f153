"""The command line: help lists commands, user errors are one line with a non-zero exit."""

import subprocess
import sys

import pytest

from MoDiffLib import cli


def run_modiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MoDiffLib", *args], capture_output=True, text=True, timeout=600)


def test_help_lists_every_available_command():
    result = run_modiff("--help")
    assert result.returncode == 0
    for module in cli._load_commands():
        assert module.NAME in result.stdout


def test_unknown_command_fails():
    result = run_modiff("no-such-command")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr
