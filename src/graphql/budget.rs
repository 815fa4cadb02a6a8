//! What a document may ask for before it runs. Complexity (page sizes times selections)
//! bounds how many rows one field may list; it does not bound how many times a document
//! repeats a field under aliases or through fragments, and each repetition is work and
//! memory while the request runs (290 aliases of `__schema` answered 3.5 MB; 2000
//! aliases of a STRONG balance held hundreds of MB). So every document is weighed by
//! its field selections with fragments expanded, against a budget that is smaller for
//! callers without a key, and introspection roots are counted on their own.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// Field selections, fragments expanded, in a document a client may send.
pub const CLIENT_FIELDS_MAX: usize = 1_000;
/// Field selections in a document sent without a valid key: enough for GraphiQL's
/// introspection query (about 200), not for repeating it.
pub const ANONYMOUS_FIELDS_MAX: usize = 400;
/// `__schema` selections per document: one answers everything there is to know.
pub const SCHEMA_ROOTS_MAX: usize = 1;
/// `__type` selections per document.
pub const TYPE_ROOTS_MAX: usize = 16;

/// How much a document asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DocumentWeight {
    /// Field selections with every fragment spread expanded where it is used.
    pub fields: usize,
    pub schema_roots: usize,
    pub type_roots: usize,
}

impl DocumentWeight {
    /// Weighs every operation of `document`. Counting stops growing at `usize::MAX`,
    /// and a fragment that spreads itself weighs as much as possible (validation would
    /// refuse it anyway), so weighing never loops or overflows.
    pub fn of(document: &ExecutableDocument) -> Self {
        let mut weigher = Weigher {
            document,
            fragments: HashMap::new(),
            fragment_roots: HashMap::new(),
        };
        let mut weight = Self::default();
        for (_, operation) in document.operations.iter() {
            let selections = &operation.node.selection_set.node;
            weight.fields = weight.fields.saturating_add(weigher.fields(selections, 0));
            let (schema, types) = weigher.introspection_roots(selections, 0);
            weight.schema_roots = weight.schema_roots.saturating_add(schema);
            weight.type_roots = weight.type_roots.saturating_add(types);
        }
        weight
    }

    /// Why this document may not run for a caller with (`true`) or without a key, if
    /// it may not.
    pub fn refusal(&self, authenticated: bool) -> Option<String> {
        let fields_max = if authenticated {
            CLIENT_FIELDS_MAX
        } else {
            ANONYMOUS_FIELDS_MAX
        };
        if self.fields > fields_max {
            let who = if authenticated {
                "a request"
            } else {
                "a request without an API key"
            };
            return Some(format!(
                "the document selects {} fields (aliases and fragments counted where they are used); {who} may select at most {fields_max}",
                self.fields
            ));
        }
        if self.schema_roots > SCHEMA_ROOTS_MAX || self.type_roots > TYPE_ROOTS_MAX {
            return Some(format!(
                "a document may select __schema at most {SCHEMA_ROOTS_MAX} time and __type at most {TYPE_ROOTS_MAX} times"
            ));
        }
        None
    }
}

/// Fragments nest at most this deep when weighed; deeper means a cycle.
const FRAGMENT_NESTING_MAX: usize = 64;

struct Weigher<'a> {
    document: &'a ExecutableDocument,
    /// Each fragment's weight and its (`__schema`, `__type`) roots, computed once
    /// however often it is spread.
    fragments: HashMap<&'a str, usize>,
    fragment_roots: HashMap<&'a str, (usize, usize)>,
}

impl<'a> Weigher<'a> {
    fn fields(&mut self, selections: &'a SelectionSet, nesting: usize) -> usize {
        if nesting > FRAGMENT_NESTING_MAX {
            return usize::MAX;
        }
        let mut total: usize = 0;
        for selection in &selections.items {
            let weight = match &selection.node {
                Selection::Field(field) => {
                    1_usize.saturating_add(self.fields(&field.node.selection_set.node, nesting))
                }
                Selection::InlineFragment(fragment) => {
                    self.fields(&fragment.node.selection_set.node, nesting)
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.node.fragment_name.node.as_str(), nesting)
                }
            };
            total = total.saturating_add(weight);
        }
        total
    }

    fn fragment(&mut self, name: &'a str, nesting: usize) -> usize {
        if let Some(&weight) = self.fragments.get(name) {
            return weight;
        }
        let Some(definition) = self.document.fragments.get(name) else {
            // An unknown fragment: validation reports it.
            return 0;
        };
        let weight = self.fields(&definition.node.selection_set.node, nesting + 1);
        self.fragments.insert(name, weight);
        weight
    }

    fn fragment_roots(&mut self, name: &'a str, nesting: usize) -> (usize, usize) {
        if let Some(&roots) = self.fragment_roots.get(name) {
            return roots;
        }
        let Some(definition) = self.document.fragments.get(name) else {
            return (0, 0);
        };
        let roots = self.introspection_roots(&definition.node.selection_set.node, nesting + 1);
        self.fragment_roots.insert(name, roots);
        roots
    }

    /// (`__schema`, `__type`) selections at the operation's root, through fragments.
    fn introspection_roots(
        &mut self,
        selections: &'a SelectionSet,
        nesting: usize,
    ) -> (usize, usize) {
        if nesting > FRAGMENT_NESTING_MAX {
            return (usize::MAX, usize::MAX);
        }
        let (mut schema, mut types) = (0_usize, 0_usize);
        for selection in &selections.items {
            let (more_schema, more_types) = match &selection.node {
                Selection::Field(field) => match field.node.name.node.as_str() {
                    "__schema" => (1, 0),
                    "__type" => (0, 1),
                    _ => (0, 0),
                },
                Selection::InlineFragment(fragment) => {
                    self.introspection_roots(&fragment.node.selection_set.node, nesting + 1)
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment_roots(spread.node.fragment_name.node.as_str(), nesting)
                }
            };
            schema = schema.saturating_add(more_schema);
            types = types.saturating_add(more_types);
        }
        (schema, types)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weigh(query: &str) -> DocumentWeight {
        DocumentWeight::of(&async_graphql::parser::parse_query(query).unwrap())
    }

    #[test]
    fn aliases_and_fragments_count_where_they_are_used() {
        assert_eq!(weigh("{ a: __typename b: __typename }").fields, 2);
        assert_eq!(
            weigh("{ account(id: \"x\") { id balance { amount version } } }").fields,
            5
        );
        // F is 3 fields, G spreads F twice (6) plus one; used twice: 14.
        let nested =
            "query { ...G ...G } fragment F on Query { a: __typename b: __typename c: __typename }
                      fragment G on Query { ...F ...F d: __typename }";
        assert_eq!(weigh(nested).fields, 14);
        assert_eq!(weigh("{ ... on Query { __typename } }").fields, 1);
    }

    #[test]
    fn fragments_that_multiply_saturate_instead_of_overflowing() {
        // Each level doubles: 2^80 fields, weighed in linear time.
        let mut query = String::from("query { ...F0 } fragment F80 on Query { __typename }");
        for level in 0..80 {
            query.push_str(&format!(
                " fragment F{level} on Query {{ ...F{next} ...F{next} }}",
                next = level + 1
            ));
        }
        let weight = weigh(&query);
        assert!(weight.fields > CLIENT_FIELDS_MAX);
        assert!(weight.refusal(true).is_some());
    }

    #[test]
    fn a_fragment_that_spreads_itself_is_refused() {
        let weight = weigh("query { ...Loop } fragment Loop on Query { __typename ...Loop }");
        assert!(weight.refusal(true).is_some());
    }

    #[test]
    fn introspection_roots_are_counted_through_fragments() {
        let weight = weigh(
            "query { a: __schema { queryType { name } } ...S } fragment S on Query { b: __schema { queryType { name } } }",
        );
        assert_eq!(weight.schema_roots, 2);
        assert!(weight.refusal(true).is_some());
        assert_eq!(
            weigh("{ __schema { queryType { name } } }").refusal(false),
            None
        );
    }

    /// graphql-js's `getIntrospectionQuery` with every option GraphiQL 3 turns on.
    const INTROSPECTION: &str = "
        query IntrospectionQuery {
          __schema {
            description
            queryType { name } mutationType { name } subscriptionType { name }
            types { ...FullType }
            directives {
              name description isRepeatable locations
              args(includeDeprecated: true) { ...InputValue }
            }
          }
        }
        fragment FullType on __Type {
          kind name description specifiedByURL
          fields(includeDeprecated: true) {
            name description
            args(includeDeprecated: true) { ...InputValue }
            type { ...TypeRef }
            isDeprecated deprecationReason
          }
          inputFields(includeDeprecated: true) { ...InputValue }
          interfaces { ...TypeRef }
          enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
          possibleTypes { ...TypeRef }
        }
        fragment InputValue on __InputValue {
          name description type { ...TypeRef } defaultValue isDeprecated deprecationReason
        }
        fragment TypeRef on __Type {
          kind name ofType { kind name ofType { kind name ofType { kind name ofType {
            kind name ofType { kind name ofType { kind name ofType { kind name ofType {
              kind name } } } } } } } }
        }";

    #[test]
    fn graphiql_introspection_fits_the_anonymous_budget_once() {
        let weight = weigh(INTROSPECTION);
        assert_eq!(weight.refusal(false), None, "{weight:?}");
        assert!(weight.fields > 150, "{weight:?}");
        let twice = INTROSPECTION.replacen(
            "__schema {",
            "again: __schema { description } __schema {",
            1,
        );
        assert!(weigh(&twice).refusal(false).is_some());
    }
}
