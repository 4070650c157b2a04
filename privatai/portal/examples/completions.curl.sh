curl __BASE_URL__/completions \
  -H "Authorization: Bearer $PRIVATAI_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "__MODEL__",
    "prompt": "The three largest cities in Germany are",
    "max_tokens": 30
  }'
