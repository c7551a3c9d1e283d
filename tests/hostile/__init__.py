"""Hostile input against both dialects: property-based (hypothesis) and hand-written cases.

The properties, for every request however malformed:

- the answer is never a 5xx, and it is a well-formed answer of the dialect its path
  belongs to (/v2/... and /user/... are Navixy, everything else Layer);
- every error is ``application/json``: Layer's ``{id, code, message, url, data}`` with
  the status its table gives, Navixy's ``{"success": false, "status": {code,
  description}}`` with ``errors`` beside it only for code 7; successes are Layer's
  empty 202 and Navixy's ``{"success": true}``;
- the database changes only through a valid command, and then only as that command
  says: both tables are read whole before and after every request.

Where things are:

- ``harness.py``: the live gateway (a real server on a thread of its own), the raw
  ``Request`` and its ``Answer``, the seeded ``World``; ``conftest.py`` gives the tests
  one such gateway, ``gateway``, and prints its figures at the end of the run;
- ``oracle.py``: what a well-formed answer of each dialect is, which database change a
  request may make, and ``exchange``, which sends a request and asserts both;
- ``specs.py``: the pools of hostile values, the hand-written body encoders, and the
  Navixy and Layer request specs, resolved against the world;
- ``strategies.py``: the hypothesis strategies that draw those specs;
- ``cases.py``: the table of hand-written adversarial cases and the answer each must get;
- ``test_fuzz.py`` (the fuzzers), ``test_handwritten.py`` (the table, and every valid
  command in every form), ``test_pinned.py`` (bugs found, fixed, and pinned).

The fuzzers leave out inputs that have regression tests of their own in test_pinned.py:
requests aiohttp's HTTP parser or expect handler refuses before any middleware runs
(``Expect``, unsupported Content-Encoding, bytes or lengths the parser refuses), unknown
charsets, multipart parts aiohttp cannot decode or whose headers it refuses, corrupt
Content-Encoding, invalid UTF-8 percent-escapes. A JSON key given twice takes its last
value, a policy pinned there too.
"""
