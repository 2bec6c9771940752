//! The schema: its tables and functions, created on first use and versioned, and the text of
//! every statement the backend sends.
//!
//! Every write runs in one PL/pgSQL function, so one round trip applies it: the function takes
//! the row lock of the store's `meta` row first, which orders every write of the store, reads
//! and checks the key's current state, takes the next revision from `meta` and writes the pair,
//! its change-log row and a `NOTIFY` in the same database transaction. Lock order, the same in
//! every function so no two can deadlock: `meta`, then lock rows, then pair rows.

use std::fmt::Write as _;

/// The version of the schema this crate creates and reads. Stored in the `meta` row; a store
/// that finds a larger one refuses to open (a newer kvstore owns the tables).
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// The names of one store's objects: `"schema"."table"` and its companions. Both parts were
/// checked to be plain lowercase identifiers (`config.rs`), so quoting them is enough.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `"schema"`.
    schema: String,
    /// `"schema"."table"`: the pairs.
    pub(crate) pairs: String,
    /// `"schema"."table_meta"`: revision, compaction floor and schema version.
    pub(crate) meta: String,
    /// `"schema"."table_log"`: the change log, by revision.
    pub(crate) log: String,
    /// `"schema"."table_locks"`: lock holds.
    pub(crate) locks: String,
    /// The prefix of the functions: `"schema"."table_`.
    func: String,
    /// The `NOTIFY` channel: `schema.table`.
    pub(crate) channel: String,
}

impl Names {
    pub(crate) fn new(schema: &str, table: &str) -> Self {
        let q = |suffix: &str| format!("\"{schema}\".\"{table}{suffix}\"");
        Names {
            schema: format!("\"{schema}\""),
            pairs: q(""),
            meta: q("_meta"),
            log: q("_log"),
            locks: q("_locks"),
            func: format!("\"{schema}\".\"{table}_"),
            channel: format!("{schema}.{table}"),
        }
    }

    /// The qualified name of function `name`.
    fn func(&self, name: &str) -> String {
        format!("{}{name}\"", self.func)
    }
}

/// The statements the backend sends, built once per store from its [`Names`].
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) read: String,
    pub(crate) list: Ranged,
    pub(crate) list_at: Ranged,
    pub(crate) since: Ranged,
    pub(crate) changed_keys: String,
    pub(crate) write: String,
    pub(crate) delete: String,
    pub(crate) delete_tree: String,
    pub(crate) txn: String,
    pub(crate) register: String,
    pub(crate) renew_key: String,
    pub(crate) lock: String,
    pub(crate) renew_lock: String,
    pub(crate) unlock: String,
    pub(crate) reap: String,
    pub(crate) trim: String,
    pub(crate) version: String,
    pub(crate) revision: String,
}

/// A statement over the keys strictly under a directory, in two forms: `$1` is `dir/` (or `""`
/// for the root) and `$2` the end of that range, `dir0` (`'0'` follows `'/'` bytewise), or
/// NULL for the root.
///
/// Two forms rather than one `key >= $1 AND ($2 IS NULL OR key < $2)`: the server plans a
/// prepared statement once for any parameters after its first five runs when that generic plan
/// costs no more than the custom ones (PostgreSQL docs, `PREPARE`, "Notes"). The generic plan of
/// the `OR` form cannot bound an index scan by `$2` and is a sequential scan of the table, so
/// the server planned that statement again on every call (a `list` of 100 keys ran at 0.55–0.9
/// of the rate of the same `SELECT` with a plain range; `pg_prepared_statements` showed no
/// generic plan for it). Each form here has a generic plan as good as
/// its custom one: an index range scan under a directory, the whole table at the root.
#[derive(Debug)]
pub(crate) struct Ranged {
    /// For a directory: `key >= $1 AND key < $2`.
    dir: String,
    /// For the root: `key >= $1 AND $2 IS NULL` (both are always true there).
    root: String,
}

impl Ranged {
    /// Builds both forms: `sql` gets the range condition on the column `{alias}key` and
    /// returns the statement around it.
    fn new(alias: &str, sql: impl Fn(&str) -> String) -> Self {
        Ranged {
            dir: sql(&format!("{alias}key >= $1 AND {alias}key < $2")),
            root: sql(&format!("{alias}key >= $1 AND $2::text IS NULL")),
        }
    }

    /// The form for the range `to` ends (`None`: the root).
    pub(crate) fn pick(&self, to: Option<&str>) -> &str {
        if to.is_some() { &self.dir } else { &self.root }
    }
}

/// A key is live while it has no expiry or its expiry is ahead of the server's clock.
const LIVE: &str = "(expires_at IS NULL OR expires_at > clock_timestamp())";

impl Sql {
    pub(crate) fn new(n: &Names) -> Self {
        Sql {
            read: format!(
                "SELECT value, last_index FROM {} WHERE key = $1 AND {LIVE}",
                n.pairs
            ),
            list: Ranged::new("", |under| {
                format!(
                    "SELECT key, value, last_index FROM {} WHERE {under} AND {LIVE} ORDER BY key",
                    n.pairs
                )
            }),
            // One statement, so one snapshot: the revision and the pairs it covers.
            list_at: Ranged::new("p.", |under| {
                format!(
                    "SELECT m.revision, p.key, p.value, p.last_index FROM {} m \
                     LEFT JOIN {} p ON {under} AND {} ORDER BY p.key",
                    n.meta,
                    n.pairs,
                    LIVE.replace("expires_at", "p.expires_at"),
                )
            }),
            // The revision and floor, then the events after `$3` under the directory.
            since: Ranged::new("l.", |under| {
                format!(
                    "SELECT m.revision, m.compacted, l.revision, l.key, l.value FROM {} m \
                     LEFT JOIN {} l ON l.revision > $3 AND {under} ORDER BY l.revision, l.key",
                    n.meta, n.log,
                )
            }),
            changed_keys: format!(
                "SELECT m.revision, m.compacted, l.key FROM {} m \
                 LEFT JOIN {} l ON l.revision > $1 ORDER BY l.revision",
                n.meta, n.log
            ),
            write: format!("SELECT * FROM {}($1, $2, $3, $4, $5)", n.func("write")),
            delete: format!("SELECT {}($1, $2, $3)", n.func("delete")),
            delete_tree: format!("SELECT {}($1, $2, $3)", n.func("delete_tree")),
            txn: format!("SELECT * FROM {}($1, $2, $3, $4, $5)", n.func("txn")),
            register: format!("SELECT {}($1, $2, $3)", n.func("register")),
            renew_key: format!(
                "UPDATE {} SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
                 WHERE key = $1 AND last_index = $2 AND expires_at > clock_timestamp() RETURNING 1",
                n.pairs
            ),
            lock: format!("SELECT * FROM {}($1, $2, $3, $4)", n.func("lock")),
            renew_lock: format!("SELECT {}($1, $2, $3)", n.func("renew_lock")),
            unlock: format!("SELECT {}($1, $2, $3)", n.func("unlock")),
            reap: format!("SELECT {}()", n.func("reap")),
            trim: format!("SELECT {}($1)", n.func("trim")),
            version: format!("SELECT version FROM {}", n.meta),
            revision: format!("SELECT revision FROM {}", n.meta),
        }
    }
}

/// The statements that create version [`SCHEMA_VERSION`] of the schema (every one idempotent),
/// run in one transaction under an advisory lock so that two stores opening at once do not
/// race.
pub(crate) fn create(n: &Names, create_schema: bool) -> String {
    let Names {
        pairs,
        meta,
        log,
        locks,
        channel,
        ..
    } = n;
    let mut sql = String::new();
    if create_schema {
        let _ = writeln!(sql, "CREATE SCHEMA IF NOT EXISTS {};", n.schema);
    }
    let f = |name: &str| n.func(name);
    let pairs_ix = n.channel.replace('.', "_");
    // Bytewise key order (`COLLATE "C"`): `list` returns the order of every other backend.
    let _ = write!(
        sql,
        r#"
CREATE TABLE IF NOT EXISTS {pairs} (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL,
    last_index bigint NOT NULL,
    expires_at timestamptz
);
CREATE INDEX IF NOT EXISTS "{pairs_ix}_expires" ON {pairs} (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {meta} (
    id int PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL,
    compacted bigint NOT NULL,
    version int NOT NULL
);
INSERT INTO {meta} VALUES (1, 0, 0, {SCHEMA_VERSION}) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS {log} (
    revision bigint NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea,
    PRIMARY KEY (revision, key)
);
CREATE TABLE IF NOT EXISTS {locks} (
    key text COLLATE "C" PRIMARY KEY,
    token bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Writes p_value at p_key with revision p_rev and expiry p_expires (NULL: none), and logs it.
-- The caller holds the meta row's lock.
CREATE OR REPLACE FUNCTION {put}(p_key text, p_value bytea, p_rev bigint,
    p_expires timestamptz) RETURNS void LANGUAGE sql AS $fn$
    INSERT INTO {pairs} VALUES (p_key, p_value, p_rev, p_expires)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, last_index = EXCLUDED.last_index,
        expires_at = EXCLUDED.expires_at;
    INSERT INTO {log} VALUES (p_rev, p_key, p_value);
$fn$;

-- A write: cond 0 none, 1 absent, 2 at index. Status 0 written, 1 exists, 2 not found,
-- 3 modified.
CREATE OR REPLACE FUNCTION {write}(p_key text, p_value bytea, p_cond smallint, p_index bigint,
    p_ttl_ms bigint) RETURNS TABLE (status smallint, revision bigint)
LANGUAGE plpgsql AS $fn$
DECLARE cur bigint; rev bigint;
BEGIN
    PERFORM 1 FROM {meta} WHERE id = 1 FOR UPDATE;
    SELECT p.last_index INTO cur FROM {pairs} p WHERE p.key = p_key AND {live} FOR UPDATE;
    IF p_cond = 1 AND cur IS NOT NULL THEN RETURN QUERY SELECT 1::smallint, 0::bigint; RETURN; END IF;
    IF p_cond = 2 AND cur IS NULL THEN RETURN QUERY SELECT 2::smallint, 0::bigint; RETURN; END IF;
    IF p_cond = 2 AND cur <> p_index THEN RETURN QUERY SELECT 3::smallint, 0::bigint; RETURN; END IF;
    UPDATE {meta} m SET revision = m.revision + 1 WHERE id = 1 RETURNING m.revision INTO rev;
    PERFORM {put}(p_key, p_value, rev, clock_timestamp() + p_ttl_ms * interval '1 millisecond');
    PERFORM pg_notify('{channel}', rev::text);
    RETURN QUERY SELECT 0::smallint, rev;
END $fn$;

-- A delete: cond 0 any, 2 at index. Status as for write.
CREATE OR REPLACE FUNCTION {delete}(p_key text, p_cond smallint, p_index bigint)
RETURNS smallint LANGUAGE plpgsql AS $fn$
DECLARE cur bigint; rev bigint;
BEGIN
    PERFORM 1 FROM {meta} WHERE id = 1 FOR UPDATE;
    SELECT p.last_index INTO cur FROM {pairs} p WHERE p.key = p_key AND {live} FOR UPDATE;
    IF cur IS NULL THEN RETURN 2; END IF;
    IF p_cond = 2 AND cur <> p_index THEN RETURN 3; END IF;
    UPDATE {meta} m SET revision = m.revision + 1 WHERE id = 1 RETURNING m.revision INTO rev;
    DELETE FROM {pairs} p WHERE p.key = p_key;
    INSERT INTO {log} VALUES (rev, p_key, NULL);
    PERFORM pg_notify('{channel}', rev::text);
    RETURN 0;
END $fn$;

-- Deletes the key p_dir (unless NULL) and every key in [p_from, p_to) (p_to NULL: no end).
-- Returns the number of live keys deleted.
CREATE OR REPLACE FUNCTION {delete_tree}(p_dir text, p_from text, p_to text)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE rev bigint; n bigint;
BEGIN
    PERFORM 1 FROM {meta} WHERE id = 1 FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM {pairs} p WHERE (p.key = p_dir
        OR (p.key >= p_from AND (p_to IS NULL OR p.key < p_to))) AND {live}) THEN
        RETURN 0;
    END IF;
    UPDATE {meta} m SET revision = m.revision + 1 WHERE id = 1 RETURNING m.revision INTO rev;
    WITH gone AS (
        DELETE FROM {pairs} p WHERE p.key = p_dir
            OR (p.key >= p_from AND (p_to IS NULL OR p.key < p_to))
        RETURNING p.key
    ), logged AS (INSERT INTO {log} SELECT rev, g.key, NULL FROM gone g RETURNING 1)
    SELECT count(*) INTO n FROM logged;
    PERFORM pg_notify('{channel}', rev::text);
    RETURN n;
END $fn$;

-- A transaction: checks (kind 0 index is, 1 exists, 2 missing, 3 held at token) on
-- c_keys/c_index, then writes (w_values NULL: delete). Returns whether every check held,
-- what each check found (a key's last_index or NULL; for held, 1 or NULL) and the revision.
CREATE OR REPLACE FUNCTION {txn}(c_kinds smallint[], c_keys text[], c_index bigint[],
    w_keys text[], w_values bytea[])
RETURNS TABLE (ok boolean, found bigint[], revision bigint)
LANGUAGE plpgsql AS $fn$
DECLARE rev bigint; f bigint[] := '{{}}'; v bigint; good boolean := true; i int;
BEGIN
    PERFORM 1 FROM {meta} WHERE id = 1 FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(c_kinds, 1), 0) LOOP
        IF c_kinds[i] = 3 THEN
            SELECT 1 INTO v FROM {locks} l WHERE l.key = c_keys[i] AND l.token = c_index[i]
                AND l.expires_at > clock_timestamp() FOR UPDATE;
        ELSE
            SELECT p.last_index INTO v FROM {pairs} p WHERE p.key = c_keys[i] AND {live}
                FOR UPDATE;
        END IF;
        IF NOT FOUND THEN v := NULL; END IF;
        f := f || v;
        good := good AND CASE c_kinds[i]
            WHEN 0 THEN v IS NOT DISTINCT FROM c_index[i]
            WHEN 1 THEN v IS NOT NULL
            WHEN 2 THEN v IS NULL
            ELSE v IS NOT NULL END;
    END LOOP;
    IF NOT good THEN RETURN QUERY SELECT false, f, 0::bigint; RETURN; END IF;
    UPDATE {meta} m SET revision = m.revision + 1 WHERE id = 1 RETURNING m.revision INTO rev;
    FOR i IN 1 .. coalesce(array_length(w_keys, 1), 0) LOOP
        IF w_values[i] IS NULL THEN
            DELETE FROM {pairs} p WHERE p.key = w_keys[i];
            IF FOUND THEN INSERT INTO {log} VALUES (rev, w_keys[i], NULL); END IF;
        ELSE
            PERFORM {put}(w_keys[i], w_values[i], rev, NULL);
        END IF;
    END LOOP;
    PERFORM pg_notify('{channel}', rev::text);
    RETURN QUERY SELECT true, f, rev;
END $fn$;

-- Writes a lost registration again, with a new expiry: unless the key holds another value.
-- Returns the new revision, or NULL.
CREATE OR REPLACE FUNCTION {register}(p_key text, p_value bytea, p_ttl_ms bigint)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE cur bytea; rev bigint;
BEGIN
    PERFORM 1 FROM {meta} WHERE id = 1 FOR UPDATE;
    SELECT p.value INTO cur FROM {pairs} p WHERE p.key = p_key AND {live} FOR UPDATE;
    IF FOUND AND cur <> p_value THEN RETURN NULL; END IF;
    UPDATE {meta} m SET revision = m.revision + 1 WHERE id = 1 RETURNING m.revision INTO rev;
    PERFORM {put}(p_key, p_value, rev, clock_timestamp() + p_ttl_ms * interval '1 millisecond');
    PERFORM pg_notify('{channel}', rev::text);
    RETURN rev;
END $fn$;

-- Takes the lock p_key for p_ttl_ms unless a live hold exists, writing p_value (unless NULL)
-- at the token; with p_bound the value expires with the hold. Returns the token, or NULL and
-- the milliseconds until the current hold runs out.
CREATE OR REPLACE FUNCTION {lock}(p_key text, p_ttl_ms bigint, p_value bytea, p_bound boolean)
RETURNS TABLE (token bigint, wait_ms bigint) LANGUAGE plpgsql AS $fn$
DECLARE held timestamptz; rev bigint; deadline timestamptz;
BEGIN
    -- A live hold is answered without the meta row's lock, so waiters that look again do not
    -- hold up the store's writes; a hold that looks free is checked again under it.
    SELECT l.expires_at INTO held FROM {locks} l WHERE l.key = p_key;
    IF NOT FOUND OR held <= clock_timestamp() THEN
        PERFORM 1 FROM {meta} WHERE id = 1 FOR UPDATE;
        SELECT l.expires_at INTO held FROM {locks} l WHERE l.key = p_key FOR UPDATE;
    END IF;
    IF FOUND AND held > clock_timestamp() THEN
        RETURN QUERY SELECT NULL::bigint,
            ceil(extract(epoch FROM held - clock_timestamp()) * 1000)::bigint;
        RETURN;
    END IF;
    UPDATE {meta} m SET revision = m.revision + 1 WHERE id = 1 RETURNING m.revision INTO rev;
    deadline := clock_timestamp() + p_ttl_ms * interval '1 millisecond';
    INSERT INTO {locks} AS l VALUES (p_key, rev, deadline)
    ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at;
    IF p_value IS NOT NULL THEN
        PERFORM {put}(p_key, p_value, rev, CASE WHEN p_bound THEN deadline END);
        PERFORM pg_notify('{channel}', rev::text);
    END IF;
    RETURN QUERY SELECT rev, 0::bigint;
END $fn$;

-- Renews the hold p_key at p_token (and its bound value) for p_ttl_ms; false when it is gone.
CREATE OR REPLACE FUNCTION {renew_lock}(p_key text, p_token bigint, p_ttl_ms bigint)
RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE deadline timestamptz := clock_timestamp() + p_ttl_ms * interval '1 millisecond';
BEGIN
    UPDATE {locks} l SET expires_at = deadline
        WHERE l.key = p_key AND l.token = p_token AND l.expires_at > clock_timestamp();
    IF NOT FOUND THEN RETURN false; END IF;
    UPDATE {pairs} p SET expires_at = deadline
        WHERE p.key = p_key AND p.last_index = p_token AND p.expires_at IS NOT NULL;
    RETURN true;
END $fn$;

-- Gives the hold p_key at p_token back, deleting its value (written at the token) when
-- p_delete. Tells lock waiters through the channel ('l' and the key).
CREATE OR REPLACE FUNCTION {unlock}(p_key text, p_token bigint, p_delete boolean)
RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE rev bigint;
BEGIN
    IF p_delete THEN PERFORM 1 FROM {meta} WHERE id = 1 FOR UPDATE; END IF;
    DELETE FROM {locks} l WHERE l.key = p_key AND l.token = p_token;
    IF NOT FOUND THEN RETURN false; END IF;
    IF p_delete AND EXISTS (SELECT 1 FROM {pairs} p WHERE p.key = p_key
        AND p.last_index = p_token) THEN
        UPDATE {meta} m SET revision = m.revision + 1 WHERE id = 1
            RETURNING m.revision INTO rev;
        DELETE FROM {pairs} p WHERE p.key = p_key AND p.last_index = p_token;
        INSERT INTO {log} VALUES (rev, p_key, NULL);
        PERFORM pg_notify('{channel}', rev::text);
    END IF;
    PERFORM pg_notify('{channel}', 'l' || p_key);
    RETURN true;
END $fn$;

-- Deletes expired holds and keys, logging each key's delete at one new revision. Safe with
-- any number of stores reaping at once: all run under the meta row lock, and a key renewed
-- meanwhile no longer matches. Returns the number of keys deleted.
CREATE OR REPLACE FUNCTION {reap}() RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE rev bigint; n bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {pairs} p WHERE p.expires_at <= clock_timestamp())
        AND NOT EXISTS (SELECT 1 FROM {locks} l WHERE l.expires_at <= clock_timestamp()) THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM {meta} WHERE id = 1 FOR UPDATE;
    DELETE FROM {locks} l WHERE l.expires_at <= clock_timestamp();
    IF NOT EXISTS (SELECT 1 FROM {pairs} p WHERE p.expires_at <= clock_timestamp()) THEN
        RETURN 0;
    END IF;
    UPDATE {meta} m SET revision = m.revision + 1 WHERE id = 1 RETURNING m.revision INTO rev;
    WITH gone AS (
        DELETE FROM {pairs} p WHERE p.expires_at <= clock_timestamp() RETURNING p.key
    ), logged AS (INSERT INTO {log} SELECT rev, g.key, NULL FROM gone g RETURNING 1)
    SELECT count(*) INTO n FROM logged;
    PERFORM pg_notify('{channel}', rev::text);
    RETURN n;
END $fn$;

-- Drops change-log rows of revisions older than the newest p_keep ones; a watch_events
-- resume from before the floor then starts with a snapshot.
CREATE OR REPLACE FUNCTION {trim}(p_keep bigint) RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE cut bigint; n bigint;
BEGIN
    SELECT m.revision - p_keep INTO cut FROM {meta} m WHERE id = 1;
    IF cut <= (SELECT m.compacted FROM {meta} m WHERE id = 1) THEN RETURN 0; END IF;
    PERFORM 1 FROM {meta} WHERE id = 1 FOR UPDATE;
    DELETE FROM {log} l WHERE l.revision <= cut;
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE {meta} m SET compacted = greatest(m.compacted, cut) WHERE id = 1;
    RETURN n;
END $fn$;
"#,
        live = LIVE.replace("expires_at", "p.expires_at"),
        put = f("put"),
        write = f("write"),
        delete = f("delete"),
        delete_tree = f("delete_tree"),
        txn = f("txn"),
        register = f("register"),
        lock = f("lock"),
        renew_lock = f("renew_lock"),
        unlock = f("unlock"),
        reap = f("reap"),
        trim = f("trim"),
    );
    sql
}
