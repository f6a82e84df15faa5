"""``regionvlm serve``: an OpenAI-compatible region chat API with dynamic batching, and a web page.

- `validation`: an OpenAI chat request (image and regions as data URLs) → a checked question, or an `APIError`;
- `batching`: the `Batcher` (one worker thread owns the model; concurrent questions share ``generate`` calls);
- `app`: the HTTP server (standard library ``http.server``) and its routes; ``page.html`` is the page.

See docs/serving.md for the API, its extension fields and the design choices.
"""
