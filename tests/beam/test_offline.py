"""Offline by design: the default Beam jobs reach for no network (Beam's DirectRunner would first
fetch a PrismRunner binary from github.com), and print no warning about Beam's optional GCP modules."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from beam_jobs import sample_candidates, score_candidates
from wofn import profiles, stages

LOCAL = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}


@pytest.fixture()
def no_network(monkeypatch):
    """Every name lookup or connection to a host other than this machine fails, and is recorded."""
    attempts = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL:
            attempts.append(host)
            raise OSError(f"network blocked by the test: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            attempts.append(address[0])
            raise OSError(f"network blocked by the test: {address[0]}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_the_default_beam_jobs_make_no_network_attempt(tmp_path, prompts_file, no_network):
    s = profiles.get("tiny")
    cands, scores = tmp_path / "candidates", tmp_path / "scores"
    sampled = sample_candidates.run(stages.sampling_argv(s, prompts_file, cands, tmp_path / "ce"),
                                    save_main_session=False)
    scored = score_candidates.run(stages.scoring_argv(s, cands, scores, tmp_path / "se", "tiny-bert"),
                                  save_main_session=False)
    assert sampled["candidates"] == 5 * s.n and scored["candidates_scored"] == 5 * s.n
    assert no_network == []


def test_the_guard_sees_an_attempt():
    """The fixture's guard catches what Beam's PrismRunner does first: a lookup of github.com."""
    with pytest.MonkeyPatch.context() as mp:
        attempts = no_network.__wrapped__(mp)
        with pytest.raises(OSError, match="network blocked"):
            socket.create_connection(("github.com", 443), timeout=1)
    assert attempts == ["github.com"]


def test_a_beam_job_prints_no_warning_about_optional_gcp_modules():
    done = subprocess.run([sys.executable, "-m", "beam_jobs.sample_candidates", "--help"], capture_output=True,
                          text=True, check=True)
    assert "apitools" not in done.stderr + done.stdout
    assert "--prompts" in done.stdout
