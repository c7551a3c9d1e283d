-- The gateway's whole schema. Applied by `python -m gateway migrate`; every
-- statement is idempotent so applying it again is harmless.

-- A session is known only by the SHA-256 of its token: a leaked table does not
-- leak credentials.
CREATE TABLE IF NOT EXISTS sessions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_sha256 bytea       NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    user_id      text        NOT NULL CHECK (user_id <> '' AND length(user_id) <= 255),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    -- Lets registrations reference (session, user) together, so a registration
    -- can never name a user other than its session's.
    UNIQUE (id, user_id)
);

CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);

-- Orders registrations by when they were last registered; a sequence rather
-- than a timestamp because one transaction registers many at the same now().
CREATE SEQUENCE IF NOT EXISTS registration_order;

CREATE TABLE IF NOT EXISTS registrations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         text        NOT NULL,
    session_id      bigint      NOT NULL,
    -- The Layer device key; NULL marks a Navixy binding, which is keyed by its
    -- session instead.
    device_id       text        CHECK (device_id <> ''),
    provider        text        NOT NULL CHECK (provider IN ('apns', 'fcm', 'webpush')),
    token           text        NOT NULL CHECK (token <> ''),
    apns_bundle_id  text,
    gcm_sender_id   text,
    ios_version     text,
    webpush_p256dh  text,
    webpush_auth    text,
    category_filter text        NOT NULL DEFAULT '*',
    registered_seq  bigint      NOT NULL DEFAULT nextval('registration_order'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- A registration dies with the session that made it: a shared device must
    -- not keep delivering one user's pushes after that user's session ends.
    FOREIGN KEY (session_id, user_id) REFERENCES sessions (id, user_id) ON DELETE CASCADE,
    CHECK ((provider = 'webpush') = (webpush_p256dh IS NOT NULL AND webpush_auth IS NOT NULL))
);

-- Every re-registration is a non-HOT update (the token is indexed), so the
-- table gathers dead row versions fast, and every key lookup visits each of
-- them until vacuum clears them. Vacuum it after a fixed number of dead rows,
-- not a fifth of the table, and without throttling.
ALTER TABLE registrations SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0);

-- One token identifies one app install: it belongs to one registration in the
-- whole system, whoever registered it last.
CREATE UNIQUE INDEX IF NOT EXISTS registrations_provider_token
    ON registrations (provider, token);
-- The registration's key, one index for both kinds so that one upsert serves
-- both: a Layer registration is keyed by (user, device), a Navixy binding by
-- its session. device_id is never '', so '' marks a binding.
CREATE UNIQUE INDEX IF NOT EXISTS registrations_key ON registrations (
    user_id, coalesce(device_id, ''), (CASE WHEN device_id IS NULL THEN session_id ELSE 0 END));
-- Nothing else is indexed: every update of a registration writes a new entry
-- into every index, and registrations_key's user_id prefix already serves the
-- cascade from sessions (which looks up (session_id, user_id)), per-user
-- listing, fan-out and eviction, a user never holding more than 25 rows.

-- Indexes of earlier versions of this schema, superseded by registrations_key.
DROP INDEX IF EXISTS registrations_session_id;
DROP INDEX IF EXISTS registrations_user_order;
DROP INDEX IF EXISTS registrations_user_device;
DROP INDEX IF EXISTS registrations_session_binding;

-- Applies one planned batch of writes (gateway/store.py plans it: the last
-- command per key wins) in a single round trip. The plan is one JSON document
-- (see WritePlan.document), which costs the client far less to encode than a
-- score of parallel arrays. Returns the sessions of the plan that are no
-- longer live, and writes nothing when there are any: the caller fails those
-- commands and plans again without them.
DROP FUNCTION IF EXISTS apply_registration_writes(
    bigint[], bigint[], text[], text[], bigint[], text[], text[], text[], text[], bigint[],
    text[], bigint[], text[], text[], text[], text[], text[], text[], text[], text[], text[],
    integer);

-- Every statement below reaches a handful of rows by key. jsonb_to_recordset
-- carries a fixed 100-row estimate, so on a small table the planner would
-- rather scan all of registrations than look rows up; for this function the
-- index is always the right way in.
CREATE OR REPLACE FUNCTION apply_registration_writes(plan json) RETURNS bigint[]
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    -- Parsed once: every -> on a json value lexes the whole document again,
    -- which made a batch cost grow with the square of its size.
    doc jsonb := plan::jsonb;
    session_ids bigint[] := ARRAY(
        SELECT s.id::bigint FROM jsonb_array_elements_text(doc -> 'sessions') AS s(id));
    max_per_user integer := (doc ->> 'max_per_user')::integer;
    live bigint[];
    dead bigint[];
    grown text[];
BEGIN
    -- FOR KEY SHARE keeps these sessions from being ended until we commit,
    -- without blocking other batches that reference them.
    -- Expiry is tested on the locked rows, not in the scan, so that the
    -- planner looks the sessions up by id instead of reading every live one
    -- through sessions_expires_at.
    SELECT coalesce(array_agg(id) FILTER (WHERE expires_at > now()), '{}') INTO live FROM (
        SELECT s.id, s.expires_at FROM sessions AS s
        WHERE s.id = ANY(session_ids)
        ORDER BY s.id
        FOR KEY SHARE OF s
    ) AS locked;
    IF cardinality(live) < cardinality(session_ids) THEN
        SELECT array_agg(wanted) INTO dead
        FROM unnest(session_ids) AS wanted WHERE wanted <> ALL(live);
        RETURN dead;
    END IF;

    -- Keys arrive sorted, so every batch takes its user and token locks in one
    -- global order and no two batches can wait on each other in a cycle.
    PERFORM pg_advisory_xact_lock(k.key::bigint)
    FROM jsonb_array_elements_text(doc -> 'locks') AS k(key);

    IF jsonb_array_length(doc -> 'delete_devices') > 0 THEN
        DELETE FROM registrations AS r
        USING jsonb_to_recordset(doc -> 'delete_devices') AS k(user_id text, device_id text)
        WHERE r.user_id = k.user_id AND r.device_id = k.device_id;
    END IF;

    IF jsonb_array_length(doc -> 'delete_bindings') > 0 THEN
        DELETE FROM registrations AS r
        USING jsonb_to_recordset(doc -> 'delete_bindings') AS k(user_id text, session_id bigint)
        WHERE r.user_id = k.user_id AND coalesce(r.device_id, '') = ''
          AND (CASE WHEN r.device_id IS NULL THEN r.session_id ELSE 0 END) = k.session_id;
    END IF;

    -- A token registered anew leaves every registration that held it, except
    -- the one the batch writes it to, which keeps its created_at.
    DELETE FROM registrations AS r
    USING jsonb_to_recordset(doc -> 'release') AS t(
        provider text, token text, keep_user text, keep_device text, keep_session bigint)
    WHERE r.provider = t.provider AND r.token = t.token
      AND (r.user_id, r.device_id, CASE WHEN r.device_id IS NULL THEN r.session_id END)
          IS DISTINCT FROM (t.keep_user, t.keep_device, t.keep_session);

    IF jsonb_array_length(doc -> 'upserts') = 0 THEN
        RETURN '{}';
    END IF;

    -- ORDER BY position keeps the order the commands arrived in, so
    -- registered_seq follows it.
    WITH written AS (
    INSERT INTO registrations (
        user_id, session_id, device_id, provider, token, apns_bundle_id, gcm_sender_id,
        ios_version, webpush_p256dh, webpush_auth, category_filter)
    SELECT user_id, session_id, device_id, provider, token, apns_bundle_id, gcm_sender_id,
           ios_version, webpush_p256dh, webpush_auth, category_filter
    FROM jsonb_to_recordset(doc -> 'upserts') AS u(
        position integer, user_id text, session_id bigint, device_id text, provider text,
        token text, apns_bundle_id text, gcm_sender_id text, ios_version text,
        webpush_p256dh text, webpush_auth text, category_filter text)
    ORDER BY position
    ON CONFLICT (
        user_id, coalesce(device_id, ''), (CASE WHEN device_id IS NULL THEN session_id ELSE 0 END))
    DO UPDATE SET
        session_id = excluded.session_id, provider = excluded.provider,
        token = excluded.token, apns_bundle_id = excluded.apns_bundle_id,
        gcm_sender_id = excluded.gcm_sender_id, ios_version = excluded.ios_version,
        webpush_p256dh = excluded.webpush_p256dh, webpush_auth = excluded.webpush_auth,
        category_filter = excluded.category_filter,
        registered_seq = nextval('registration_order'), updated_at = now()
    -- xmax is 0 on a row the statement inserted, and set on one it updated.
    RETURNING user_id, xmax = 0 AS inserted
    )
    SELECT coalesce(array_agg(DISTINCT user_id) FILTER (WHERE inserted), '{}')
    INTO grown FROM written;

    -- Layer's ceiling: a user's 26th registration evicts the least recently
    -- registered. Only a user who gained a row can have gone past it: an
    -- update or a delete never adds one. Only live registrations count: those
    -- of expired, not yet purged sessions are evicted first, whatever their
    -- age. Every grown user is left with at most max_per_user rows, so the
    -- live ones alone can never exceed it either.
    IF cardinality(grown) = 0 THEN
        RETURN '{}';
    END IF;
    DELETE FROM registrations WHERE id IN (
        SELECT old.id
        FROM unnest(grown) AS users(user_id)
        CROSS JOIN LATERAL (
            SELECT r.id FROM registrations AS r
            JOIN sessions AS s ON s.id = r.session_id
            WHERE r.user_id = users.user_id
            ORDER BY s.expires_at > now() DESC, r.registered_seq DESC
            OFFSET max_per_user
        ) AS old
    );
    RETURN '{}';
END;
$$;

-- Layer's authentication handshake: nonces issued by POST /nonces, known only
-- by their SHA-256 like sessions, single use (consumed by the statement that
-- opens the session) and short-lived. In the database so that every worker
-- and every host sees the same ones.
CREATE TABLE IF NOT EXISTS layer_nonces (
    nonce_sha256 bytea       PRIMARY KEY CHECK (octet_length(nonce_sha256) = 32),
    expires_at   timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS layer_nonces_expires_at ON layer_nonces (expires_at);
-- ---------------------------------------------------------------- delivery
-- A notification and one delivery row per target, written in one transaction
-- by POST /internal/v1/notifications; delivery workers on any host claim due
-- rows with FOR UPDATE SKIP LOCKED under a lease (gateway/delivery/worker.py).

CREATE TABLE IF NOT EXISTS notifications (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- A retried POST with the same key gets this notification back; the body's
    -- digest tells a retry from a different message reusing the key.
    idempotency_key text        UNIQUE CHECK (idempotency_key <> ''),
    request_sha256  bytea,
    audience        jsonb       NOT NULL,
    category        text        NOT NULL,
    -- json, not jsonb: the Web Push plaintext is the override exactly as sent,
    -- its keys in their order.
    message         json        NOT NULL,
    overrides       json        NOT NULL DEFAULT '{}',
    ttl_seconds     integer     NOT NULL CHECK (ttl_seconds > 0),
    expires_at      timestamptz NOT NULL,
    priority        text        NOT NULL CHECK (priority IN ('high', 'normal')),
    collapse_key    text,
    targets         integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    -- Copied from the registration at enqueue: a delivery goes to the token as it
    -- was when the message was sent, and outlives the registration's changes.
    user_id         text        NOT NULL,
    provider        text        NOT NULL CHECK (provider IN ('apns', 'fcm', 'webpush')),
    token           text        NOT NULL,
    apns_bundle_id  text,
    gcm_sender_id   text,
    webpush_p256dh  text,
    webpush_auth    text,
    -- The notification's, copied so that claiming needs no join.
    expires_at      timestamptz NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed', 'pruned', 'expired')),
    attempts        integer     NOT NULL DEFAULT 0,
    -- When the row is next due: a retry's time, or a claimed row's lease end,
    -- so that a row whose worker died is due again when its lease ends.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner     text,
    -- A new value per claim: an outcome is recorded only under the lease it was
    -- claimed with, so a stale worker cannot overwrite a newer attempt.
    lease_id        uuid,
    lease_until     timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

-- Claiming: the due pending rows of one provider, oldest first.
CREATE INDEX IF NOT EXISTS deliveries_due
    ON deliveries (provider, next_attempt_at) WHERE state = 'pending';
-- A notification's counts, and paging through its deliveries of one outcome.
CREATE INDEX IF NOT EXISTS deliveries_notification
    ON deliveries (notification_id, state, id);
-- The retention purge.
CREATE INDEX IF NOT EXISTS deliveries_delivered_at
    ON deliveries (finished_at) WHERE state = 'delivered';

-- Delivered rows purged after the retention period, counted here so that a
-- notification's counts stay exact.
CREATE TABLE IF NOT EXISTS notification_purged (
    notification_id uuid   NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    provider        text   NOT NULL,
    delivered       bigint NOT NULL,
    PRIMARY KEY (notification_id, provider)
);
