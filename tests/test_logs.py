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
