"""Server settings the `serve` command builds from its flags: upload-sized limits and the page's address."""

from __future__ import annotations

import pytest

from counterclip.errors import InputError
from counterclip.server.settings import Limits, page_url


def test_limits_sized_for_a_large_upload_hold_it_base64_encoded() -> None:
    limits = Limits.sized_for_upload(30 * 1024 * 1024, 50_000_000, 500)
    assert limits.max_upload_bytes == 30 * 1024 * 1024
    # base64 is 4/3 of the file, plus 64 KB for the JSON around it
    assert limits.max_body_bytes == 40 * 1024 * 1024 + 64 * 1024
    assert (limits.max_upload_pixels, limits.max_text_chars) == (50_000_000, 500)
    assert (limits.max_upload_side, limits.max_labels) == (Limits().max_upload_side, Limits().max_labels)


def test_limits_for_a_small_upload_keep_the_default_body() -> None:
    assert Limits.sized_for_upload(1024, 1_000_000, 1000).max_body_bytes == 16 * 1024 * 1024
    assert Limits.sized_for_upload(10 * 1024 * 1024, 40_000_000, 1000) == Limits()


def test_limits_sized_for_upload_still_refuse_nonsense() -> None:
    with pytest.raises(InputError):
        Limits.sized_for_upload(0, 1_000_000, 1000)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000/"),
        ("0.0.0.0", "http://127.0.0.1:8000/"),
        ("::", "http://127.0.0.1:8000/"),
        ("", "http://127.0.0.1:8000/"),
        ("::1", "http://[::1]:8000/"),
        ("gpu-box.lan", "http://gpu-box.lan:8000/"),
    ],
)
def test_page_url(host: str, url: str) -> None:
    assert page_url(host, 8000) == url
