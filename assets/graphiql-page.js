// Starts GraphiQL against this server's /graphql. No header is preset: until the user
// adds one, requests go without a key and the server says "missing API key".
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
