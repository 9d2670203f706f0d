-- What a receiver's network requires (issue 25):
--   delivery_options  JSON text {"headers": {...}, "client_certificate": NAME, "timeout": s},
--                     each key present only when set; NULL: none (see webhookd/network.py)
--   public_key        signing v1a: the ed25519 public key (whpk_...), its private key kept in
--                     secret / previous_secret like an HMAC secret; NULL: signing v1
ALTER TABLE webhooks
    ADD COLUMN delivery_options text,
    ADD COLUMN public_key text;
