MODEL (
  name shop.daily_revenue,
  kind FULL,
  grain order_date,
  audits (assert_positive_revenue),
  description 'Revenue per day, over all products.'
);

SELECT
  orders.order_date AS order_date,
  SUM(orders.quantity * orders.unit_price) AS revenue
FROM shop.orders AS orders
GROUP BY orders.order_date
