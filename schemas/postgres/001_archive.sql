-- The permanent history and the projector's positions.
-- Tables are created unqualified: `eventbot migrate` runs each file with the
-- target schema first on search_path, so a shadow schema gets the same DDL.

CREATE TABLE event_log (
    event_id      uuid        PRIMARY KEY,
    stream        text        NOT NULL,
    entry_id      text        NOT NULL,
    entry_ms      bigint      NOT NULL,
    entry_seq     bigint      NOT NULL,
    family        text        NOT NULL,
    type          text        NOT NULL,
    version       integer     NOT NULL,
    partition_key text        NOT NULL,
    user_id       bigint,
    occurred_at   timestamptz NOT NULL,
    payload       jsonb       NOT NULL
);
-- Replay reads a stream in entry order; rebuilds read one key's or one user's events.
CREATE INDEX event_log_stream_entry ON event_log (stream, entry_ms, entry_seq);
CREATE INDEX event_log_partition_key ON event_log (family, partition_key);
CREATE INDEX event_log_user ON event_log (user_id) WHERE user_id IS NOT NULL;

-- Up to which entry of `stream` the group's effects are committed here.
CREATE TABLE checkpoints (
    group_name text        NOT NULL,
    stream     text        NOT NULL,
    entry_ms   bigint      NOT NULL,
    entry_seq  bigint      NOT NULL,
    entry_id   text        NOT NULL,
    events     bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, stream)
);

-- Move a checkpoint from the position the projector last saw to the end of the
-- batch it is committing; raise (SQLSTATE EB409) if the row is elsewhere, so
-- the whole batch rolls back instead of applying twice. The schema is passed in
-- (not captured) because a replay's shadow schema is renamed when swapped in.
CREATE FUNCTION advance_checkpoint(
    p_schema text, p_group text, p_stream text,
    p_from_ms bigint, p_from_seq bigint, p_to_ms bigint, p_to_seq bigint, p_to_id text, p_events bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
BEGIN
    IF p_from_ms = 0 AND p_from_seq = 0 THEN
        EXECUTE format('INSERT INTO %I.checkpoints (group_name, stream, entry_ms, entry_seq, entry_id)'
                       ' VALUES ($1, $2, 0, 0, ''0-0'') ON CONFLICT DO NOTHING', p_schema)
            USING p_group, p_stream;
    END IF;
    EXECUTE format('UPDATE %I.checkpoints SET entry_ms = $3, entry_seq = $4, entry_id = $5,'
                   ' events = events + $6, updated_at = now()'
                   ' WHERE group_name = $1 AND stream = $2 AND entry_ms = $7 AND entry_seq = $8', p_schema)
        USING p_group, p_stream, p_to_ms, p_to_seq, p_to_id, p_events, p_from_ms, p_from_seq;
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved <> 1 THEN
        RAISE EXCEPTION 'checkpoint of % on % moved', p_group, p_stream USING ERRCODE = 'EB409';
    END IF;
END;
$$;
