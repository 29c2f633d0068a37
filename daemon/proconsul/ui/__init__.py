"""The web UI's static assets, shipped as package data and served by `proconsul.http.ui`.

Hand-written HTML, CSS and JavaScript modules (no build step, no toolchain, nothing fetched at run
time): `index.html` is the single page; `assets/js/main.js` routes Consul's UI URLs
(`<content_path><dc>/services`, `.../nodes/<node>/health-checks`, `.../kv/<path>/`, ...) on the
client; `assets/js/pages/*` render each page from the public `/v1` API (plus Consul's
`/v1/internal/ui/{services,nodes}` summaries), kept live by blocking queries (`assets/js/api.js`).
This package holds no Python code beyond this marker.
"""
