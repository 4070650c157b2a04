curl __BASE_URL__/embeddings \
  -H "Authorization: Bearer $PRIVATAI_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "__MODEL__",
    "input": ["Privacy by design", "Hosted in Germany"]
  }'
