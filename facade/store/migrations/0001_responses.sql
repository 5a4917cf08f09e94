-- The Responses API's stored state (facade/store/responses.py). One dialect for SQLite and
-- PostgreSQL: TEXT, INTEGER, DOUBLE PRECISION and plain indexes mean the same in both.
-- JSON is kept as TEXT (never jsonb): a string holding U+0000 is valid JSON that jsonb refuses.

-- One row per stored response. owner is the SHA-256 (hex) of the authenticated subject, so a
-- subject's responses are found by equality and no identity is kept in clear. body is the Response
-- object as the API answers it; expires_at = created_at + the retention period (epoch seconds).
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    previous_response_id TEXT,
    body TEXT NOT NULL
);

CREATE INDEX responses_expires_at ON responses (expires_at);

-- The input items of a response, in order: the whole conversation the model was shown (the
-- previous response's input and output items first, then this request's), instructions excepted.
CREATE TABLE response_input_items (
    response_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (response_id, position)
);

CREATE INDEX response_input_items_item_id ON response_input_items (response_id, item_id);
