"""What tests/e2e/leak_app.py sends in the clear, and what the collector must turn it into.

Kept apart from leak_app.py, which configures kiki-otel when imported: the tests import only this.
"""

from __future__ import annotations

API_KEY = "e2eAPIKEYsuper5ecret"
ACCESS_TOKEN = "e2eACCESSt0ken123456"
DB_PASSWORD = "e2eDbS3cretPw"
DSN = f"postgresql://app:{DB_PASSWORD}@db:5432/plans"
DSN_MASKED = "postgresql://app****db:5432/plans"
LOGIN_PASSWORD = "e2e-hunter2-login"
API_TOKEN = "e2e-tok-123456"
BASIC_CREDENTIAL = "Basic ZTJlLXVzZXI6ZTJlLWJhc2ljLXB3"  # base64("e2e-user:e2e-basic-pw")
BEARER_IN_PROSE = "auth header was Bearer e2eopaquetokenabcdefghijklmnopq"
# the query the leak app's outgoing call carries: two credentials and one ordinary parameter
QUERY = {"api_key": API_KEY, "access_token": ACCESS_TOKEN, "page": "2"}
QUERY_MASKED = "****&****&page=2"

# none of these may reach Jaeger or the logs backend
SECRETS = (
    API_KEY,
    ACCESS_TOKEN,
    DB_PASSWORD,
    LOGIN_PASSWORD,
    API_TOKEN,
    BASIC_CREDENTIAL.split()[1],
    BEARER_IN_PROSE.split()[-1],
)

# ... and these must arrive exactly as sent (they only look like secrets to a careless pattern)
PROSE = "falling back to basic authentication for the legacy API"
INPUT_TOKENS = 812
OUTPUT_TOKENS = 64
TOKENIZER = "cl100k"
