import io
import json
import logging

from eventbot.logs import configure_logging, correlation_id


def test_logs_are_json_with_correlation_and_without_secrets() -> None:
    out = io.StringIO()
    handler = configure_logging("INFO", secrets=["my-api-key-123"], stream=out)
    try:
        token = "123456789:AAHfakefakefakefakefakefakefakefake1"
        correlation_id.set("upd-42")
        logging.getLogger("aiogram.session").info("POST https://api.telegram.org/bot%s/sendMessage", token)
        logging.getLogger("x").warning("key was %s", "my-api-key-123")
        try:
            raise RuntimeError(f"failed with sk-ant-api03-abcdefghijklmnop and {token}")
        except RuntimeError:
            logging.getLogger("x").exception("boom")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)
    assert [line["correlation_id"] for line in lines] == ["upd-42"] * 3
    text = out.getvalue()
    for secret in (token, "my-api-key-123", "sk-ant-api03-abcdefghijklmnop"):
        assert secret not in text
    assert "***" in lines[0]["msg"] and "***" in lines[2]["exc"]


def test_the_http_libraries_under_the_sdks_stay_at_warning_even_at_debug() -> None:
    # They log URLs (a bot token) and request details; the Anthropic SDK's stack logs as httpx2/httpcore2.
    out = io.StringIO()
    root_level = logging.getLogger().level
    handler = configure_logging("DEBUG", stream=out)
    try:
        for name in ("httpx2", "httpcore2.http11", "httpcore2.connection", "httpx", "anthropic._base_client",
                     "aiogram.event", "aiohttp.access"):
            logging.getLogger(name).info("HTTP Request: POST https://example.invalid/v1/messages")
            logging.getLogger(name).debug("send_request_headers.started")
        logging.getLogger("eventbot.agent").debug("ours")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(root_level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["eventbot.agent"]
