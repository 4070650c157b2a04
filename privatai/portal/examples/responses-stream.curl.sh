curl -N __BASE_URL__/responses \
  -H "Authorization: Bearer $PRIVATAI_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "__MODEL__",
    "input": "Hello, how are you?",
    "max_output_tokens": 100,
    "stream": true
  }'
