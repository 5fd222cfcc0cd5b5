MODEL (
  name shop.category_revenue,
  kind FULL,
  grain category,
  description 'Revenue per product category, all time.'
);

SELECT
  products.category AS category,
  SUM(orders.quantity * orders.unit_price) AS revenue
FROM shop.orders AS orders
JOIN shop.products AS products
  ON orders.product_id = products.product_id
GROUP BY products.category
