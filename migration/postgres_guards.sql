-- The PostgreSQL guards of a freshly migrated ledger database, as PostgreSQL prints
-- them back: functions, then triggers, then CHECK constraints, each sorted by name.
-- Generated; a test (tests/api/guards_sql.rs) fails when the migrations and this file
-- disagree. After a migration that changes a guard, rewrite it with
--   LEDGER_WRITE_GUARDS_SQL=1 cargo test --test api guards_sql
-- docs/consistency.md maps each invariant to its guard here.

CREATE OR REPLACE FUNCTION public.ledger_accounts_unchanged(unchanged boolean)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$ BEGIN IF unchanged IS NOT TRUE THEN RAISE EXCEPTION 'an account of the batch moved since it was read' USING ERRCODE = 'LDG01'; END IF; RETURN true; END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_account_moves()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
         DECLARE culprit uuid;
         BEGIN
           SELECT found_id INTO culprit FROM (SELECT new_rows.id FROM old_rows JOIN new_rows ON new_rows.id = old_rows.id
                         WHERE (new_rows.balance_minor, new_rows.version)
                               IS DISTINCT FROM (old_rows.balance_minor, old_rows.version)
                           AND NOT COALESCE((
               SELECT COUNT(*) = new_rows.version - old_rows.version
                      AND SUM(CASE WHEN chain.balance_after_minor = old_rows.balance_minor + chain.running
                                   THEN 0 ELSE 1 END) = 0
                      AND MAX(chain.balance_after_minor)
                            FILTER (WHERE chain.account_version = new_rows.version) = new_rows.balance_minor
               FROM (SELECT account_version, balance_after_minor,
                            SUM(CASE direction WHEN 'CREDIT' THEN amount_minor
                                               ELSE -amount_minor END)
                              OVER (ORDER BY account_version) AS running
                     FROM ledger_entries
                     WHERE account_id = new_rows.id AND account_version > old_rows.version
                       AND account_version <= new_rows.version) AS chain), false)) AS found(found_id) LIMIT 1;
         IF FOUND THEN
           RAISE EXCEPTION 'ledger guard: account % moved without the ledger entries that justify it', culprit
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
SELECT found_id INTO culprit FROM (SELECT touched.id FROM (SELECT DISTINCT * FROM (SELECT new_rows.id FROM new_rows JOIN old_rows ON old_rows.id = new_rows.id
                         WHERE new_rows.pending_minor IS DISTINCT FROM old_rows.pending_minor) AS listed) AS touched(id)
         WHERE (SELECT account.pending_minor FROM accounts AS account WHERE account.id = touched.id)
               <> (SELECT COALESCE(SUM(hold.amount_minor), 0) FROM live_holds AS hold
                   WHERE hold.account_id = touched.id)) AS found(found_id) LIMIT 1;
         IF FOUND THEN
           RAISE EXCEPTION 'ledger guard: account % has a pending amount other than the sum of its live holds', culprit
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
           RETURN NULL;
         END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_account_settings()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
             BEGIN
               IF OLD.status = 'CLOSED' OR NEW.change_seq <> OLD.change_seq + 1 OR NOT EXISTS (SELECT 1 FROM account_changes AS change WHERE change.account_id = NEW.id AND change.change_seq = NEW.change_seq AND change.old_status = OLD.status AND change.new_status = NEW.status AND change.old_credit_limit_minor IS NOT DISTINCT FROM OLD.credit_limit_minor AND change.new_credit_limit_minor IS NOT DISTINCT FROM NEW.credit_limit_minor AND change.old_external_ref IS NOT DISTINCT FROM OLD.external_ref AND change.new_external_ref IS NOT DISTINCT FROM NEW.external_ref) THEN
                 RAISE EXCEPTION 'ledger guard: account %: settings change only as its next recorded change, never once CLOSED', NEW.id
                   USING ERRCODE = 'integrity_constraint_violation';
               END IF;
               RETURN NEW;
             END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_entries()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
         DECLARE lonely uuid;
         BEGIN
           SELECT entry.id INTO lonely
           FROM new_entries AS entry
           WHERE NOT COALESCE((
             SELECT account.version >= entry.account_version
                    AND account.currency = entry.currency
                    AND account.client_id = entry.client_id
             FROM accounts AS account
             WHERE account.id = entry.account_id), false)
           LIMIT 1;
           IF FOUND THEN
             RAISE EXCEPTION 'ledger guard: entry % is not on an account that moved over it', lonely
               USING ERRCODE = 'integrity_constraint_violation';
           END IF;
           SELECT payment_id INTO lonely
           FROM (SELECT DISTINCT payment_id FROM new_entries) AS touched
           WHERE NOT COALESCE((
           SELECT paid.posted IS NOT NULL
                  AND (SELECT COUNT(*) = 2
                              AND COUNT(*) FILTER (
                                    WHERE half.direction = 'DEBIT'
                                      AND half.account_id = paid.from_account_id) = 1
                              AND COUNT(*) FILTER (
                                    WHERE half.direction = 'CREDIT'
                                      AND half.account_id = paid.to_account_id) = 1
                              AND COUNT(*) FILTER (
                                    WHERE half.amount_minor = paid.posted
                                      AND half.currency = paid.currency
                                      AND half.client_id = paid.client_id) = 2
                       FROM ledger_entries AS half
                       WHERE half.payment_id = paid.id)
           FROM (SELECT original.id, original.from_account_id, original.to_account_id,
                        original.currency, original.client_id, CASE original.status WHEN 'POSTED' THEN original.amount_minor WHEN 'PENDING' THEN (SELECT settled.amount_minor FROM payment_settlements AS settled WHERE settled.payment_id = original.id AND settled.kind = 'CAPTURE') END AS posted
                 FROM payments AS original WHERE original.id = touched.payment_id) AS paid), false)
           LIMIT 1;
           IF FOUND THEN
             RAISE EXCEPTION 'ledger guard: payment % is not one POSTED payment with its two entries', lonely
               USING ERRCODE = 'integrity_constraint_violation';
           END IF;
           RETURN NULL;
         END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_entry_time()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
             DECLARE culprit uuid;
             BEGIN
               SELECT entry.id INTO culprit FROM new_entries AS entry
               WHERE entry.created_at <= (SELECT previous.created_at FROM ledger_entries AS previous
          WHERE previous.account_id = entry.account_id
            AND previous.account_version = entry.account_version - 1)
               LIMIT 1;
               IF FOUND THEN
                 RAISE EXCEPTION 'ledger guard: entry % is not later than the entry before it on its account', culprit
                   USING ERRCODE = 'integrity_constraint_violation';
               END IF;
               RETURN NULL;
             END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_groups()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
         DECLARE culprit uuid;
         BEGIN
           SELECT named.group_id INTO culprit
           FROM (SELECT DISTINCT group_id FROM new_payments WHERE group_id IS NOT NULL) AS named
           LEFT JOIN payment_groups AS g ON g.id = named.group_id
           WHERE g.id IS NULL
             OR (g.payment_count <> (SELECT COUNT(*) FROM payments AS p WHERE p.group_id = g.id)
                  OR (SELECT COUNT(*) FILTER (WHERE p.status = 'DECLINED') FROM payments AS p
                      WHERE p.group_id = g.id) NOT IN (0, g.payment_count)
                  OR EXISTS (SELECT 1 FROM payments AS p WHERE p.group_id = g.id
                             AND (p.client_id <> g.client_id
                                  OR p.idempotency_key <> g.idempotency_key
                                  OR p.group_index NOT BETWEEN 0 AND g.payment_count - 1)))
           LIMIT 1;
           IF FOUND THEN
             RAISE EXCEPTION 'ledger guard: payment group % is not whole: all of its payments, all declined or none', culprit
               USING ERRCODE = 'integrity_constraint_violation';
           END IF;
           RETURN NULL;
         END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_payments()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
             DECLARE culprit uuid; broken text;
             BEGIN
               SELECT paid.id, paid.broken INTO culprit, broken FROM (
                 SELECT new_payments.id, CASE
                   WHEN new_payments.status = 'POSTED'
                        AND (SELECT COUNT(*) FROM ledger_entries
                             WHERE payment_id = new_payments.id) = 0
                     THEN 'is POSTED without its two entries'
                   WHEN new_payments.status = 'PENDING' AND NOT COALESCE((
                          SELECT hold.account_id = new_payments.from_account_id
                                 AND hold.amount_minor = new_payments.amount_minor
                                 AND hold.expires_at = new_payments.hold_expires_at
                                 AND hold.client_id = new_payments.client_id
                          FROM live_holds AS hold WHERE hold.payment_id = new_payments.id), false)
                     THEN 'is PENDING without its hold'
                   WHEN new_payments.refund_of IS NOT NULL AND NOT COALESCE((
                          SELECT original.client_id = new_payments.client_id
                                 AND original.from_account_id = new_payments.to_account_id
                                 AND original.to_account_id = new_payments.from_account_id
                                 AND original.currency = new_payments.currency
                                 AND original.refund_of IS NULL
                                 AND (SELECT COALESCE(SUM(given.amount_minor), 0)
                                      FROM payments AS given
                                      WHERE given.refund_of = original.id
                                        AND given.status = 'POSTED')
                                     <= COALESCE(CASE original.status WHEN 'POSTED' THEN original.amount_minor WHEN 'PENDING' THEN (SELECT settled.amount_minor FROM payment_settlements AS settled WHERE settled.payment_id = original.id AND settled.kind = 'CAPTURE') END, 0)
                          FROM payments AS original
                          WHERE original.id = new_payments.refund_of), false)
                     THEN 'is a refund that does not give back part of what its payment posted'
                   END AS broken
                 FROM new_payments) AS paid
               WHERE paid.broken IS NOT NULL
               LIMIT 1;
               IF FOUND THEN
                 RAISE EXCEPTION 'ledger guard: payment % %', culprit, broken
                   USING ERRCODE = 'integrity_constraint_violation';
               END IF;
               RETURN NULL;
             END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_placed_holds()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
         DECLARE culprit uuid;
         BEGIN
           SELECT found_id INTO culprit FROM (SELECT placed.payment_id FROM new_holds AS placed WHERE NOT COALESCE((
                       SELECT hold.status = 'PENDING'
                              AND hold.from_account_id = placed.account_id
                              AND hold.amount_minor = placed.amount_minor
                              AND hold.hold_expires_at = placed.expires_at
                              AND hold.client_id = placed.client_id
                              AND (SELECT COUNT(*) FROM payment_settlements AS settled
                                   WHERE settled.payment_id = hold.id) = 0
                       FROM payments AS hold WHERE hold.id = placed.payment_id), false)) AS found(found_id) LIMIT 1;
         IF FOUND THEN
           RAISE EXCEPTION 'ledger guard: hold % does not match an unsettled PENDING payment', culprit
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
SELECT found_id INTO culprit FROM (SELECT touched.id FROM (SELECT DISTINCT * FROM (SELECT account_id FROM new_holds) AS listed) AS touched(id)
         WHERE (SELECT account.pending_minor FROM accounts AS account WHERE account.id = touched.id)
               <> (SELECT COALESCE(SUM(hold.amount_minor), 0) FROM live_holds AS hold
                   WHERE hold.account_id = touched.id)) AS found(found_id) LIMIT 1;
         IF FOUND THEN
           RAISE EXCEPTION 'ledger guard: account % has a pending amount other than the sum of its live holds', culprit
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
           RETURN NULL;
         END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_refuse()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$ BEGIN RAISE EXCEPTION 'ledger guard: % of % rejected: %', TG_OP, TG_TABLE_NAME, TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation'; END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_released_holds()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
         DECLARE culprit uuid;
         BEGIN
           SELECT found_id INTO culprit FROM (SELECT released.payment_id FROM old_holds AS released
                     WHERE released.expires_at > clock_timestamp()
                       AND (SELECT COUNT(*) FROM payment_settlements AS settled
                            WHERE settled.payment_id = released.payment_id) = 0) AS found(found_id) LIMIT 1;
         IF FOUND THEN
           RAISE EXCEPTION 'ledger guard: hold % left while neither settled nor expired', culprit
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
SELECT found_id INTO culprit FROM (SELECT touched.id FROM (SELECT DISTINCT * FROM (SELECT account_id FROM old_holds) AS listed) AS touched(id)
         WHERE (SELECT account.pending_minor FROM accounts AS account WHERE account.id = touched.id)
               <> (SELECT COALESCE(SUM(hold.amount_minor), 0) FROM live_holds AS hold
                   WHERE hold.account_id = touched.id)) AS found(found_id) LIMIT 1;
         IF FOUND THEN
           RAISE EXCEPTION 'ledger guard: account % has a pending amount other than the sum of its live holds', culprit
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
           RETURN NULL;
         END $function$
;

CREATE OR REPLACE FUNCTION public.ledger_guard_settlements()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
         DECLARE culprit uuid;
         BEGIN
           SELECT found_id INTO culprit FROM (SELECT settlement.id FROM new_settlements AS settlement WHERE NOT COALESCE((
                   SELECT hold.status = 'PENDING'
                          AND hold.client_id = settlement.client_id
                          AND settlement.amount_minor <= hold.amount_minor
                          AND (SELECT COUNT(*) FROM live_holds AS live
                               WHERE live.payment_id = hold.id) = 0
                          AND (SELECT COUNT(*) FROM ledger_entries AS entry
                               WHERE entry.payment_id = hold.id)
                              = CASE settlement.kind WHEN 'CAPTURE' THEN 2 ELSE 0 END
                   FROM payments AS hold WHERE hold.id = settlement.payment_id), false)) AS found(found_id) LIMIT 1;
         IF FOUND THEN
           RAISE EXCEPTION 'ledger guard: settlement % does not settle a live hold of its client once', culprit
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;
           RETURN NULL;
         END $function$
;

CREATE OR REPLACE FUNCTION public.reject_append_only_change()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$ BEGIN RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP USING ERRCODE = 'restrict_violation'; END $function$
;

CREATE TRIGGER account_changes_append_only BEFORE DELETE OR UPDATE ON account_changes FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER account_changes_no_truncate BEFORE TRUNCATE ON account_changes FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER accounts_closed_empty BEFORE UPDATE ON accounts FOR EACH ROW WHEN (new.status::text = 'CLOSED'::text AND (new.balance_minor <> 0 OR new.pending_minor <> 0)) EXECUTE FUNCTION ledger_guard_refuse('a CLOSED account holds nothing');

CREATE TRIGGER accounts_identity_kept BEFORE UPDATE ON accounts FOR EACH ROW WHEN (old.id IS DISTINCT FROM new.id OR old.client_id IS DISTINCT FROM new.client_id OR old.currency::text IS DISTINCT FROM new.currency::text OR old.balance_rule::text IS DISTINCT FROM new.balance_rule::text OR old.created_at IS DISTINCT FROM new.created_at OR old.feed_seq IS DISTINCT FROM new.feed_seq) EXECUTE FUNCTION ledger_guard_refuse('an account''s identity never changes');

CREATE TRIGGER accounts_move_with_entries AFTER UPDATE ON accounts REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_account_moves();

CREATE TRIGGER accounts_never_deleted BEFORE DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION ledger_guard_refuse('accounts are never deleted');

CREATE TRIGGER accounts_never_truncated BEFORE TRUNCATE ON accounts FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_refuse('accounts are never deleted');

CREATE TRIGGER accounts_settings_recorded BEFORE UPDATE ON accounts FOR EACH ROW WHEN (new.status::text IS DISTINCT FROM old.status::text OR new.credit_limit_minor IS DISTINCT FROM old.credit_limit_minor OR new.external_ref::text IS DISTINCT FROM old.external_ref::text OR new.change_seq IS DISTINCT FROM old.change_seq) EXECUTE FUNCTION ledger_guard_account_settings();

CREATE TRIGGER api_keys_never_deleted BEFORE DELETE ON api_keys FOR EACH ROW EXECUTE FUNCTION ledger_guard_refuse('keys are revoked, never deleted');

CREATE TRIGGER api_keys_only_revoked BEFORE UPDATE ON api_keys FOR EACH ROW WHEN (new.id IS DISTINCT FROM old.id OR new.client_id IS DISTINCT FROM old.client_id OR new.key_hash::text IS DISTINCT FROM old.key_hash::text OR new.created_at IS DISTINCT FROM old.created_at OR old.revoked_at IS NOT NULL) EXECUTE FUNCTION ledger_guard_refuse('a key only ever gets revoked, once');

CREATE TRIGGER idempotency_keys_append_only BEFORE DELETE OR UPDATE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER idempotency_keys_no_truncate BEFORE TRUNCATE ON idempotency_keys FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER ledger_entries_append_only BEFORE DELETE OR UPDATE ON ledger_entries FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER ledger_entries_double_entry AFTER INSERT ON ledger_entries REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_entries();

CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER ledger_entries_time_forward AFTER INSERT ON ledger_entries REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_entry_time();

CREATE TRIGGER live_holds_leave_when_settled AFTER DELETE ON live_holds REFERENCING OLD TABLE AS old_holds FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_released_holds();

CREATE TRIGGER live_holds_match_payments AFTER INSERT ON live_holds REFERENCING NEW TABLE AS new_holds FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_placed_holds();

CREATE TRIGGER live_holds_never_changed BEFORE UPDATE ON live_holds FOR EACH ROW EXECUTE FUNCTION ledger_guard_refuse('a hold is placed and released, never changed');

CREATE TRIGGER live_holds_no_truncate BEFORE TRUNCATE ON live_holds FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_refuse('holds leave one by one, when settled or expired');

CREATE TRIGGER payment_groups_append_only BEFORE DELETE OR UPDATE ON payment_groups FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER payment_groups_no_truncate BEFORE TRUNCATE ON payment_groups FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER payment_metadata_append_only BEFORE DELETE OR UPDATE ON payment_metadata FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER payment_metadata_no_truncate BEFORE TRUNCATE ON payment_metadata FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER payment_settlements_append_only BEFORE DELETE OR UPDATE ON payment_settlements FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER payment_settlements_no_truncate BEFORE TRUNCATE ON payment_settlements FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER payment_settlements_settle_live_holds AFTER INSERT ON payment_settlements REFERENCING NEW TABLE AS new_settlements FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_settlements();

CREATE TRIGGER payments_append_only BEFORE DELETE OR UPDATE ON payments FOR EACH ROW EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER payments_groups_whole AFTER INSERT ON payments REFERENCING NEW TABLE AS new_payments FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_groups();

CREATE TRIGGER payments_no_truncate BEFORE TRUNCATE ON payments FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change();

CREATE TRIGGER payments_posted_with_entries AFTER INSERT ON payments REFERENCING NEW TABLE AS new_payments FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_payments();

ALTER TABLE account_changes ADD CONSTRAINT account_changes_change_seq_check CHECK (change_seq > 0);

ALTER TABLE account_changes ADD CONSTRAINT account_changes_kind_check CHECK (kind::text = ANY (ARRAY['UPDATE'::character varying, 'FREEZE'::character varying, 'UNFREEZE'::character varying, 'CLOSE'::character varying]::text[]));

ALTER TABLE accounts ADD CONSTRAINT accounts_balance_rule_check CHECK (balance_rule::text = ANY (ARRAY['NON_NEGATIVE'::character varying, 'CREDIT_LIMIT'::character varying, 'UNBOUNDED'::character varying]::text[]));

ALTER TABLE accounts ADD CONSTRAINT accounts_change_seq_check CHECK (change_seq >= 0);

ALTER TABLE accounts ADD CONSTRAINT accounts_check CHECK (balance_rule::text = 'CREDIT_LIMIT'::text AND credit_limit_minor IS NOT NULL AND credit_limit_minor >= 0 OR balance_rule::text <> 'CREDIT_LIMIT'::text AND credit_limit_minor IS NULL);

ALTER TABLE accounts ADD CONSTRAINT accounts_check1 CHECK (balance_rule::text <> 'NON_NEGATIVE'::text OR balance_minor >= 0);

ALTER TABLE accounts ADD CONSTRAINT accounts_check2 CHECK (balance_rule::text <> 'CREDIT_LIMIT'::text OR balance_minor >= (- credit_limit_minor));

ALTER TABLE accounts ADD CONSTRAINT accounts_pending_within_rule CHECK (pending_minor >= 0 AND hold_seq >= 0 AND (balance_rule::text <> 'NON_NEGATIVE'::text OR (balance_minor - pending_minor) >= 0) AND (balance_rule::text <> 'CREDIT_LIMIT'::text OR (balance_minor - pending_minor) >= (- credit_limit_minor)));

ALTER TABLE accounts ADD CONSTRAINT accounts_status_check CHECK (status::text = ANY (ARRAY['ACTIVE'::character varying, 'FROZEN'::character varying, 'CLOSED'::character varying]::text[]));

ALTER TABLE accounts ADD CONSTRAINT accounts_version_check CHECK (version >= 0);

ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_account_version_check CHECK (account_version > 0);

ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_amount_minor_check CHECK (amount_minor > 0);

ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_direction_check CHECK (direction::text = ANY (ARRAY['DEBIT'::character varying, 'CREDIT'::character varying]::text[]));

ALTER TABLE live_holds ADD CONSTRAINT live_holds_amount_minor_check CHECK (amount_minor > 0);

ALTER TABLE payment_groups ADD CONSTRAINT payment_groups_payment_count_check CHECK (payment_count >= 1 AND payment_count <= 100);

ALTER TABLE payment_settlements ADD CONSTRAINT payment_settlements_check CHECK (kind::text = 'CAPTURE'::text AND amount_minor > 0 OR kind::text = 'VOID'::text AND amount_minor = 0);

ALTER TABLE payments ADD CONSTRAINT payments_amount_minor_check CHECK (amount_minor > 0);

ALTER TABLE payments ADD CONSTRAINT payments_check CHECK (from_account_id <> to_account_id);

ALTER TABLE payments ADD CONSTRAINT payments_status_shape CHECK (((status::text = ANY (ARRAY['POSTED'::character varying, 'PENDING'::character varying]::text[])) AND decline_reason IS NULL OR status::text = 'DECLINED'::text AND decline_reason IS NOT NULL) AND (status::text <> 'PENDING'::text OR hold_expires_at IS NOT NULL) AND (status::text <> 'POSTED'::text OR hold_expires_at IS NULL) AND (refund_of IS NULL OR status::text <> 'PENDING'::text AND refund_of <> id));
