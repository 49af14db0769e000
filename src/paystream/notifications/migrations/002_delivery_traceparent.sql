-- The trace a delivery belongs to (W3C traceparent of the event span that queued it), so the
-- worker's send, made later and elsewhere, continues the payment's trace. NULL: tracing was off.
ALTER TABLE deliveries ADD COLUMN traceparent text;
