-- The transaction a Bento unit of work commits when shop.Service.Place
-- places a one-line order (see outbox/write.go): the order, its line, the
-- aggregate's sequence upsert and the OrderPlaced outbox row, upsert and
-- insert in one statement as Bento does on PostgreSQL. Run by
-- scripts/pgbench.sh on a schema made by `bento migrate`.
BEGIN;
INSERT INTO orders (version, customer, status, total_cents, created_at, updated_at)
  VALUES (1, 'pgbench-' || (:client_id)::text || '@example.com', 'pending', 2500, now(), now())
  RETURNING id AS order_id \gset
INSERT INTO order_lines (sku, quantity, unit_price_cents, order_lines) VALUES ('SKU-1', 2, 1250, (:order_id)::bigint);
-- The outbox statement is the writer's own (outbox.WriteStatements), its
-- parameters replaced by the values below (outbox's pgbenchArgs);
-- TestPgbenchScriptMatchesWriter in package outbox fails when they differ.
WITH s AS (INSERT INTO "bento_outbox_sequences" (aggregatetype, aggregateid, last_sequence)
  VALUES ('Order', (:order_id)::bigint::text, 1)
  ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET last_sequence = "bento_outbox_sequences".last_sequence + 1
  RETURNING last_sequence)
INSERT INTO "bento_outbox" (id, aggregatetype, aggregateid, type, payload, sequence, headers, occurred_at, status, attempts, next_attempt_at)
  SELECT gen_random_uuid()::uuid, 'Order', (:order_id)::bigint::text, 'OrderPlaced',
    jsonb_build_object('order_id', (:order_id)::bigint, 'customer', 'pgbench-' || (:client_id)::text || '@example.com', 'total_cents', 2500,
      'lines', jsonb_build_array(jsonb_build_object('sku', 'SKU-1', 'quantity', 2, 'unit_price_cents', 1250)))::jsonb,
    s.last_sequence, NULL::jsonb, now()::timestamptz, 'pending', 0, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::bigint
  FROM s;
COMMIT;
