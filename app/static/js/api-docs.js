// /api/docs: Swagger UI on the app's own OpenAPI schema, from vendored files (no CDN, no inline script).
window.addEventListener("load", () => {
  window.SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
