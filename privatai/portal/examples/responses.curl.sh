curl __BASE_URL__/responses \
  -H "Authorization: Bearer $PRIVATAI_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "__MODEL__",
    "instructions": "Answer in one sentence.",
    "input": "What is machine learning?",
    "max_output_tokens": 100
  }'
