// Starts GraphiQL against this server's /graphql. No header is preset: until the user
// adds one, requests go without a key and the server says "missing API key".
// A server that runs only trusted documents (GRAPHQL_DOCUMENTS=trusted) refuses what is
// typed here; the page asks it once and says so above the editor.
(function () {
  "use strict";
  var defaultQuery = [
    "# Payments ledger · GraphiQL (served by the ledger,",
    "# works offline).",
    "#",
    "# Every request needs your API key. Open the Headers",
    "# tab below and paste:",
    "#",
    '#   { "Authorization": "Bearer <your API key>" }',
    "#",
    "# `payments-ledger client create <name>` prints a new",
    "# key. Headers last only while this tab is open.",
    "# The live dashboard is at /dashboard.",
    "",
    "query LatestPayments {",
    "  payments(last: 10) {",
    "    nodes {",
    "      id status amount currency createdAt",
    "      fromAccount { id } toAccount { id }",
    "    }",
    "    pageInfo { endCursor }",
    "  }",
    "}",
    "",
  ].join("\n");
  fetch("/graphql?query=" + encodeURIComponent("{ __typename }"), {
    headers: { accept: "application/json" },
    cache: "no-store",
  })
    .then(function (response) {
      return response.json();
    })
    .then(function (body) {
      var error = body && body.errors && body.errors[0];
      if (error && error.extensions && error.extensions.code === "DOCUMENT_NOT_TRUSTED") {
        var notice = document.createElement("p");
        notice.id = "trusted-only";
        notice.className = "notice";
        notice.setAttribute("role", "status");
        notice.textContent =
          "This server runs only trusted documents (GRAPHQL_DOCUMENTS=trusted): a query typed " +
          "here runs only if it is, character for character, one of its manifest's " +
          "(GRAPHQL_TRUSTED_DOCUMENTS). Anything else is refused with DOCUMENT_NOT_TRUSTED.";
        document.body.insertBefore(notice, document.getElementById("graphiql"));
        document.body.classList.add("with-notice");
      }
    })
    .catch(function () {
      // The server is unreachable: GraphiQL will say so on the first run.
    });
  var fetcher = GraphiQL.createFetcher({ url: "/graphql" });
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
    })
  );
})();
