AUDIT (
  name assert_positive_revenue
);

-- Rows returned are violations: revenue can never be zero or negative.
SELECT *
FROM @this_model
WHERE revenue <= 0
