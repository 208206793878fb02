-- What people query: users, chats, threads, messages, files, responses, money.
-- Columns come in groups with a version column (`*_at`, `ledger_seq`): the
-- projector's upsert only overwrites a group with a newer version, so events of
-- one user arriving from different partitions settle to the latest.

CREATE TABLE users (
    user_id       bigint PRIMARY KEY,
    username      text,
    first_name    text,
    last_name     text,
    language_code text,
    is_premium    boolean,
    names_at      timestamptz,
    model         text,
    model_at      timestamptz,
    prompt        text,
    prompt_at     timestamptz,
    balance       bigint,
    held          bigint,
    ledger_seq    bigint,
    first_seen_at timestamptz
);

CREATE TABLE chats (
    chat_id         bigint PRIMARY KEY,
    chat_type       text,
    first_seen_at   timestamptz,
    last_message_at timestamptz
);

CREATE TABLE threads (
    thread_id  uuid PRIMARY KEY,
    chat_id    bigint,
    topic_id   bigint,
    user_id    bigint,
    created_at timestamptz,
    title      text,
    title_at   timestamptz
);

-- User messages are keyed by chat and Telegram message id, assistant messages
-- by response id ("r:<uuid>"), so both sit in one table.
CREATE TABLE messages (
    message_key        text PRIMARY KEY,
    role               text,
    chat_id            bigint,
    topic_id           bigint,
    message_id         bigint,
    user_id            bigint,
    response_id        uuid,
    text               text,
    caption            text,
    attachments        jsonb,
    disposition        text,
    model              text,
    input_tokens       bigint,
    output_tokens      bigint,
    cache_read_tokens  bigint,
    cache_write_tokens bigint,
    cost               bigint,
    occurred_at        timestamptz,
    edited_text        text,
    edited_caption     text,
    edited_at          timestamptz
);
CREATE INDEX messages_chat ON messages (chat_id, occurred_at);

CREATE TABLE files (
    file_key       text PRIMARY KEY,
    chat_id        bigint,
    topic_id       bigint,
    message_id     bigint,
    user_id        bigint,
    kind           text,
    file_id        text,
    file_unique_id text,
    mime_type      text,
    size           bigint,
    name           text,
    status         text,
    reason         text,
    occurred_at    timestamptz
);

CREATE TABLE responses (
    response_id          uuid PRIMARY KEY,
    chat_id              bigint,
    topic_id             bigint,
    user_id              bigint,
    thread_id            uuid,
    model                text,
    max_tokens           integer,
    attempt              integer,
    message_ids          bigint[],
    started_at           timestamptz,
    state                text,
    finished_at          timestamptz,
    stop_reason          text,
    cause                text,
    ttft_ms              integer,
    duration_ms          integer,
    input_tokens         bigint,
    output_tokens        bigint,
    cache_read_tokens    bigint,
    cache_write_tokens   bigint,
    cost                 bigint,
    telegram_message_ids bigint[]
);

-- The ledger, one row per balance event: immutable once written.
CREATE TABLE balance_operations (
    user_id                    bigint      NOT NULL,
    seq                        bigint      NOT NULL,
    event_id                   uuid        NOT NULL UNIQUE,
    type                       text        NOT NULL,
    amount                     bigint      NOT NULL,
    balance_after              bigint      NOT NULL,
    held_after                 bigint      NOT NULL,
    prev_hash                  text        NOT NULL,
    hash                       text        NOT NULL,
    occurred_at                timestamptz NOT NULL,
    source                     text,
    reference                  text,
    charge_id                  uuid,
    hold_id                    uuid,
    hold_settled               bigint,
    model                      text,
    input_tokens               bigint,
    output_tokens              bigint,
    cache_read_tokens          bigint,
    cache_write_tokens         bigint,
    price_version              text,
    telegram_payment_charge_id text,
    PRIMARY KEY (user_id, seq)
);

CREATE TABLE payments (
    telegram_payment_charge_id text PRIMARY KEY,
    user_id                    bigint,
    stars                      bigint,
    currency                   text,
    payload                    text,
    provider_payment_charge_id text,
    credited                   bigint,
    received_at                timestamptz,
    refunded_stars             bigint,
    debited                    bigint,
    refunded_at                timestamptz
);
